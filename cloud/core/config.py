"""Service settings, read from the environment (prefix SOUNDWARDEN_)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "soundwarden"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SOUNDWARDEN_", extra="forbid")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the database, clips and bundles live (SOUNDWARDEN_DATA_DIR).",
    )
