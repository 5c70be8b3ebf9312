"""The wire contract between devices, the cloud and integrators: MQTT topics and payloads.

The one definition edge and cloud both import; `tests/test_contract.py` freezes the JSON
schemas, so a change here that would break a subscriber fails the build until the schema
snapshot, `../shared/DESIGN.md` and the MQTT reference change with it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PREFIX = "soundwarden"


def events_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/{device}/events"


def availability_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained `online` / `offline`; the broker publishes `offline` as the device's last will."""
    return f"{prefix}/{device}/availability"


def state_topic(device: str, label: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained `ON` while an episode of `label` lasts, `OFF` otherwise."""
    return f"{prefix}/{device}/state/{label}"


def status_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained `StatusPayload` heartbeat."""
    return f"{prefix}/{device}/status"


ONLINE, OFFLINE = "online", "offline"
STATE_ON, STATE_OFF = "ON", "OFF"


class ModelRef(BaseModel):
    """Which model produced an event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Bundle name, e.g. cry-detector.")
    version: str = Field(description="Bundle version, e.g. 1.1.0.")


class EventPayload(BaseModel):
    """`<prefix>/<device>/events`, QoS 1: one message per step of an episode.

    An episode is one stretch of sound over the threshold; all its messages share `id`, so a
    subscriber can fold `start`, `update` and `end` into one record, and a replayed message
    (same id and type) is recognisably a duplicate.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Episode id, stable across start/update/end (UUID hex).")
    type: Literal["start", "update", "end"] = Field(description="Episode step.")
    label: str = Field(description="What was heard: a bundle label, e.g. cry or abnormal.")
    score: float = Field(description="The latest window's score for the label.")
    max_score: float = Field(description="Highest window score of the episode so far.")
    started_at: datetime = Field(description="When the episode's first window began (UTC).")
    ended_at: datetime | None = Field(
        None, description="When its last window ended (UTC); set on `end` only."
    )
    level_dbfs: float = Field(description="RMS level of the latest window, dB full scale.")
    model: ModelRef = Field(description="The bundle that made the decision.")
    device: str = Field(description="Device id.")
    clip: str | None = Field(None, description="Id of the uploaded audio clip, once known.")


class SourceStatus(BaseModel):
    """The audio input as the daemon sees it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["microphone", "file", "stdin"] = Field(description="Kind of source.")
    name: str = Field(description="Device name, file path or `stdin`.")
    state: Literal["starting", "running", "stalled", "reopening", "ended"] = Field(
        description="`stalled`: no audio for the watchdog's timeout; `reopening`: being retried."
    )
    level_dbfs: float | None = Field(
        description="RMS level of the latest analysed window, dB full scale; null before the first."
    )


class WindowCounts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    processed: int = Field(description="1 s windows scored since start.")
    dropped: int = Field(description="Windows skipped because analysis fell behind capture.")


class SpoolStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(description="Entries (events, clip uploads) waiting for acknowledgement.")
    dropped: int = Field(description="Entries dropped by the overflow policy, ever.")


class ClipsStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pending: int = Field(description="Clips on the device waiting for upload (or kept locally).")
    uploaded: int = Field(description="Clips the cloud accepted since start.")
    rejected: int = Field(description="Clips the cloud refused (kept on the device) since start.")
    lost: int = Field(description="Clips deleted before upload to respect the disk quota.")
    disk_mb: float = Field(description="Disk space clips use, MB.")


class StatusPayload(BaseModel):
    """`<prefix>/<device>/status`, retained: the device's heartbeat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(description="Device id.")
    at: datetime = Field(description="When this heartbeat was made (UTC).")
    uptime_s: float = Field(description="Seconds since the daemon started.")
    model: ModelRef = Field(description="The running bundle.")
    source: SourceStatus = Field(description="The audio input.")
    windows: WindowCounts = Field(description="Analysis counters.")
    spool: SpoolStatus = Field(description="The durable outbox.")
    clips: ClipsStatus | None = Field(description="Clips around episodes; null when disabled.")
    cpu_percent: float = Field(description="Daemon CPU use since the last heartbeat, % of a core.")
    rss_mb: float = Field(description="Daemon resident memory, MiB.")


class ClipMetadata(BaseModel):
    """Sent with every clip upload (`POST /api/v1/clips`, multipart field `metadata`).

    `id` is the clip's idempotency key: the episode id, so an upload retried after a lost
    answer names the same clip and the cloud keeps one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Clip id: the episode id it was recorded for.")
    device: str = Field(description="Device id.")
    event_id: str = Field(description="Episode id of the event the clip belongs to.")
    label: str = Field(description="The episode's label.")
    score: float = Field(description="The episode's highest window score.")
    model: ModelRef = Field(description="The bundle that raised the episode.")
    started_at: datetime = Field(description="Time of the clip's first sample (UTC).")
    ended_at: datetime = Field(description="Time just after the clip's last sample (UTC).")
    episode_started_at: datetime = Field(description="When the episode began (UTC).")
    episode_ended_at: datetime = Field(description="When the episode ended (UTC).")
    sample_rate: int = Field(description="Sample rate of the clip file, Hz.")
    truncated: bool = Field(
        description="Cut at the longest clip allowed before the post-roll was complete."
    )
