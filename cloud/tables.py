"""The database tables (SQLAlchemy 2). The schema itself is made by `cloud/migrations`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from cloud.core.db import Base

Role = Literal["admin", "labeller"]
ROLES: tuple[Role, ...] = ("admin", "labeller")
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
RolloutState = Literal["running", "paused", "completed", "aborted"]
ACTIVE_ROLLOUT: tuple[RolloutState, ...] = ("running", "paused")
MemberState = Literal["waiting", "notified", "healthy", "failed"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive values and returns them so)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC time")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    disabled: Mapped[bool] = mapped_column(default=False)


class Session(Base):
    """A console login. The cookie holds the token; only its SHA-256 is stored."""

    __tablename__ = "sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LoginAttempt(Base):
    """Failed logins, counted per user name and per address for the rate limit."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), index=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Device(Base):
    """An enrolled device: its token (hashed) for HTTP, and what the MQTT bridge last heard."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    last_upload_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    online: Mapped[bool | None] = mapped_column(default=None)
    availability_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    model_name: Mapped[str | None] = mapped_column(String(64), default=None)
    model_version: Mapped[str | None] = mapped_column(String(32), default=None)
    status: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    status_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    spool_depth: Mapped[int | None] = mapped_column(default=None)
    last_event_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    last_event_label: Mapped[str | None] = mapped_column(String(64), default=None)
    group: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    model_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    model_state_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)


class Label(Base):
    """A label clips can be given; `key` is its digit in the console."""

    __tablename__ = "labels"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[int | None] = mapped_column(unique=True, default=None)
    description: Mapped[str] = mapped_column(Text, default="")


class Clip(Base):
    """A clip: uploaded by a device around an event, or cut from an imported recording.

    `group_id` is what splits keep together (the device, or the imported recording), so no
    recorder lands in two splits.
    """

    __tablename__ = "clips"
    __table_args__ = (
        Index("ix_clips_queue", "label", "uncertainty", "received_at"),
        Index("ix_clips_received", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # device | import
    device_id: Mapped[str | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), index=True, default=None
    )
    group_id: Mapped[str] = mapped_column(String(128), index=True)
    event_id: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    device_label: Mapped[str | None] = mapped_column(String(64), default=None)
    device_score: Mapped[float | None] = mapped_column(Float, default=None)
    model_name: Mapped[str | None] = mapped_column(String(64), default=None)
    model_version: Mapped[str | None] = mapped_column(String(32), default=None)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sample_rate: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    original_key: Mapped[str] = mapped_column(String(255))
    original_format: Mapped[str] = mapped_column(String(16))
    audio_key: Mapped[str] = mapped_column(String(255))  # 16 kHz mono FLAC
    sha256: Mapped[str] = mapped_column(String(64))
    metadata_json: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    label: Mapped[str | None] = mapped_column(
        ForeignKey("labels.name", onupdate="CASCADE"), default=None
    )
    labelled_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    labelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    false_positive: Mapped[bool] = mapped_column(default=False)
    # Model assistance: the latest suggestion and how far its score sits from the threshold
    # (queue order: smallest first). Null until a model has scored the clip.
    suggestion: Mapped[str | None] = mapped_column(String(64), default=None)
    suggestion_score: Mapped[float | None] = mapped_column(Float, default=None)
    suggestion_model: Mapped[str | None] = mapped_column(String(100), default=None)
    window_scores: Mapped[list[float] | None] = mapped_column(JSON, default=None)
    uncertainty: Mapped[float | None] = mapped_column(Float, default=None)


class LabelChange(Base):
    """Every label given or taken back: the audit trail, and what `u` undoes."""

    __tablename__ = "label_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    clip_id: Mapped[str] = mapped_column(ForeignKey("clips.id", ondelete="CASCADE"), index=True)
    old_label: Mapped[str | None] = mapped_column(String(64))
    new_label: Mapped[str | None] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Event(Base):
    """An event message the MQTT bridge received (one row per episode step)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_device_at", "device_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    episode_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(8))
    label: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    clip_id: Mapped[str | None] = mapped_column(String(64), default=None)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class Job(Base):
    """A background job (bulk import, model assistance, training) and its progress."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    log: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    # The lease (cloud/jobs/core.py): the process running it ("hostname:pid"), when it last said
    # it was alive, and how many runs have started (a run a shutdown interrupted not counted).
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ModelVersion(Base):
    """A signed bundle in the registry."""

    __tablename__ = "model_versions"
    __table_args__ = (Index("ux_model_versions", "name", "version", unique=True),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)


class Rollout(Base):
    """A registry bundle going out to devices, stage by stage (see cloud/rollout.py)."""

    __tablename__ = "rollouts"
    __table_args__ = (
        # At most one running or paused rollout per model, even for two promotions at once.
        Index(
            "ux_rollouts_active",
            "model_name",
            unique=True,
            sqlite_where=text("state IN ('running', 'paused')"),
            postgresql_where=text("state IN ('running', 'paused')"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(64))
    version: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    base_url: Mapped[str] = mapped_column(Text)  # where devices reach this service
    group: Mapped[str | None] = mapped_column(String(64), default=None)
    stages: Mapped[list[str]] = mapped_column(JSON)
    stage: Mapped[int] = mapped_column(default=-1)  # the latest stage notified; -1: none yet
    state: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str] = mapped_column(Text, default="")  # why it is paused or aborted
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)


class RolloutDevice(Base):
    """One device of a rollout: its stage, where it stands, and the model/set it is owed."""

    __tablename__ = "rollout_devices"
    __table_args__ = (
        # The MQTT bridge looks for owed messages every second.
        Index(
            "ix_rollout_devices_owed",
            "rollout_id",
            sqlite_where=text("outbox IS NOT NULL"),
            postgresql_where=text("outbox IS NOT NULL"),
        ),
    )

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    stage: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    previous_version: Mapped[str | None] = mapped_column(String(32), default=None)
    # The retained model/set the MQTT bridge must publish next: a ModelSetPayload's JSON, or ""
    # to clear the topic; null when nothing is owed.
    outbox: Mapped[str | None] = mapped_column(Text, default=None)
    # When the bridge first handed this rollout's model/set to the broker: from then on the
    # device may have it, so an abort must send it the old version back.
    notified_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
    # The device's latest model/state naming this rollout.
    update_state: Mapped[str | None] = mapped_column(String(16), default=None)
    progress: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    reported_at: Mapped[datetime | None] = mapped_column(UtcDateTime, default=None)
