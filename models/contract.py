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
