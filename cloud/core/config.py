"""Service settings, read from the environment (prefix SOUNDWARDEN_).

The single-machine default needs nothing set: SQLite, clips and bundles under `data_dir`, the
embedded job runner. Growing out of one machine is a matter of settings: `database_url` to
PostgreSQL, `storage` to S3, `jobs` to Celery on Redis, `mqtt_url` to the fleet's broker.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "soundwarden"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOUNDWARDEN_", extra="forbid")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the database, clips, bundles and keys live (SOUNDWARDEN_DATA_DIR).",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; "
        "default sqlite:///<data_dir>/soundwarden.db.",
    )
    storage: Literal["local", "s3"] = Field(
        "local", description="Where clip audio is kept: `local` (data_dir/clips) or `s3`."
    )
    s3_bucket: str = Field("soundwarden", description="S3 bucket for clip audio.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO, Ceph...); unset for AWS."
    )
    s3_prefix: str = Field("", description="Key prefix inside the bucket, e.g. `prod/`.")
    jobs: Literal["embedded", "celery"] = Field(
        "embedded",
        description="Who runs background jobs: threads in this process, or Celery workers "
        "(`soundwarden-cloud worker`) on `redis_url`.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker and backend.")
    embedded_workers: int = Field(2, ge=1, description="Threads of the embedded job runner.")
    job_lease_s: float = Field(
        60.0,
        gt=0,
        description="A running job whose process has not written its heartbeat (every quarter "
        "of this) for this long is taken as abandoned (killed, crashed, cut off): it is run "
        "again, or failed when that was its second run. Give workers the same value.",
    )
    mqtt_url: str | None = Field(
        None,
        description="Broker the fleet publishes to, mqtt://[user:password@]host[:port]; "
        "unset: no MQTT bridge.",
    )
    mqtt_prefix: str = Field("soundwarden", description="Topic prefix the devices use.")
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        max_length=200,
        description="The base URL devices reach this service at, e.g. https://cloud.example.org "
        "(bundle URLs in model/set messages start with it); unset: the base URL of the request "
        "that starts the rollout.",
    )
    embedded_broker_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Run an amqtt broker inside the service on this loopback port for a "
        "one-machine demo (the bridge uses it when mqtt_url is unset); Mosquitto is the "
        "production broker.",
    )
    max_clip_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest clip upload accepted, bytes."
    )
    max_clip_s: float = Field(120.0, gt=0, description="Longest clip accepted, seconds.")
    min_clip_s: float = Field(0.1, gt=0, description="Shortest clip accepted, seconds.")
    max_import_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=1024, description="Largest recording a bulk import takes."
    )
    session_hours: float = Field(12.0, gt=0, description="How long a console login lasts.")
    secure_cookies: bool = Field(
        False, description="Mark session cookies Secure (set true behind HTTPS)."
    )
    login_attempts: int = Field(
        5, ge=1, description="Failed logins allowed per user and per address per window."
    )
    login_window_s: float = Field(900.0, gt=0, description="The failed-login window, seconds.")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'soundwarden.db'}"
