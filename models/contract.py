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


def model_set_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained `ModelSetPayload` from the cloud: the bundle this device should run."""
    return f"{prefix}/{device}/model/set"


def model_state_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Retained `ModelStatePayload`: the installed model and how an update is going."""
    return f"{prefix}/{device}/model/state"


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


class ModelSetPayload(BaseModel):
    """`<prefix>/<device>/model/set`, retained, cloud to device: install this bundle.

    An empty retained message cancels an update that has not switched yet; one naming the
    installed version does too (and so puts back the model a rollout replaced).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Bundle name; must be the running model's name.")
    version: str = Field(description="Bundle version to install.")
    url: str = Field(
        pattern=r"^https?://",
        description="Where to download the bundle .tar.gz (with the device token).",
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the .tar.gz.")
    size: int = Field(ge=1, description="Size of the .tar.gz in bytes.")
    rollout: str | None = Field(None, description="The rollout asking for it, echoed in state.")


UpdateState = Literal[
    "idle",
    "downloading",
    "verifying",
    "shadowing",
    "probation",
    "installed",
    "rejected",
    "rolled_back",
    "failed",
]
"""`idle`: nothing asked; `downloading` / `verifying` / `shadowing` / `probation`: the steps;
`installed`: the asked-for bundle runs and passed probation; `rejected`: refused before the
switch; `rolled_back`: switched, then put back; `failed`: a step failed and is retried."""

IN_PROGRESS: tuple[UpdateState, ...] = ("downloading", "verifying", "shadowing", "probation")


class ModelTarget(BaseModel):
    """The bundle an update is about."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Bundle name.")
    version: str = Field(description="Bundle version.")
    sha256: str = Field(description="SHA-256 of its .tar.gz.")


class ShadowReport(BaseModel):
    """The candidate next to the running model on the same live audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: int = Field(description="Windows both models scored.")
    agreement: float = Field(description="Fraction of those windows with the same decisions.")
    events_running: int = Field(description="Episodes the running model started meanwhile.")
    events_candidate: int = Field(description="Episodes the candidate would have started.")


class ModelStatePayload(BaseModel):
    """`<prefix>/<device>/model/state`, retained: what runs and how an update is going.

    The last six fields are those Home Assistant's MQTT `update` entity reads from a JSON state
    topic, so the entity needs no template.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(description="Device id.")
    at: datetime = Field(description="When this state was reported (UTC).")
    state: UpdateState = Field(description="Where the update stands.")
    installed: ModelRef = Field(description="The bundle running now.")
    previous: ModelRef | None = Field(description="The bundle kept for rollback, if any.")
    target: ModelTarget | None = Field(description="The bundle the latest update is about.")
    rollout: str | None = Field(description="The rollout that asked for the target.")
    progress: float | None = Field(description="Progress of the current step, 0 to 1.")
    error: str | None = Field(description="Why the target was rejected or rolled back, or failed.")
    shadow: ShadowReport | None = Field(description="The shadowing comparison, once measured.")
    installed_version: str = Field(description="Home Assistant: the installed version.")
    latest_version: str = Field(
        description="Home Assistant: the version being installed, else the installed one."
    )
    title: str = Field(description="Home Assistant: the model's name.")
    in_progress: bool = Field(description="Home Assistant: an update step is under way.")
    update_percentage: float | None = Field(description="Home Assistant: step progress in %.")
    release_summary: str | None = Field(
        max_length=255, description="Home Assistant: one line on the state or the error."
    )
