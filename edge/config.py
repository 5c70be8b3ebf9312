"""The daemon's configuration: one TOML file, validated before anything starts.

Every section is a pydantic model with `extra="forbid"` and a description on every field, so a
typo is an error that names the key, and `soundwarden-edge check-config` can print what each key
means. Secrets may stay out of the file: `SOUNDWARDEN_MQTT_PASSWORD` and
`SOUNDWARDEN_DEVICE_TOKEN` override `mqtt.password` and `clips.token` (systemd's
`EnvironmentFile=` or credentials put them there).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.bundle import DEFAULT_TRUSTED_KEYS, PRETRAINED_DIR

SECRET_ENV = {
    "SOUNDWARDEN_MQTT_PASSWORD": ("mqtt", "password"),
    "SOUNDWARDEN_DEVICE_TOKEN": ("clips", "token"),
}
DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ConfigError(ValueError):
    """The configuration cannot be used; the message names each bad key and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MicrophoneSourceConfig(_Section):
    type: Literal["microphone"] = Field(description="Capture from a sound card via PyAudio.")
    device: str | int | None = Field(
        None,
        description="Input device: its index or part of its name, as `soundwarden-edge devices` "
        "lists them; the system default input when unset.",
    )
    sample_rate: int | None = Field(
        None,
        ge=8000,
        le=384000,
        description="Capture rate in Hz; the device's native rate when unset (then resampled "
        "to the model's rate).",
    )
    channels: int | None = Field(
        None,
        ge=1,
        le=32,
        description="Channels to open (downmixed to mono); up to two when unset (set it for "
        "a microphone array).",
    )
    chunk_s: float = Field(
        0.05, gt=0, le=1, description="Seconds of audio per read from the sound card."
    )


class FileSourceConfig(_Section):
    type: Literal["file"] = Field(description="Replay a WAV/FLAC/OGG file.")
    path: Path = Field(description="The audio file to replay.")
    realtime: bool = Field(
        True, description="Pace the file as a microphone would; false reads as fast as possible."
    )
    loop: bool = Field(False, description="Start again at the end instead of stopping.")
    chunk_s: float = Field(0.05, gt=0, le=1, description="Seconds of audio per read.")


class StdinSourceConfig(_Section):
    type: Literal["stdin"] = Field(
        description="Raw little-endian 16-bit PCM on standard input, e.g. from `arecord -t raw`."
    )
    sample_rate: int = Field(
        16000, ge=8000, le=384000, description="Sample rate of the PCM on stdin, Hz."
    )
    channels: int = Field(1, ge=1, le=32, description="Interleaved channels on stdin.")
    chunk_s: float = Field(0.05, gt=0, le=1, description="Seconds of audio per read.")


SourceConfig = Annotated[
    MicrophoneSourceConfig | FileSourceConfig | StdinSourceConfig, Field(discriminator="type")
]


class AudioConfig(_Section):
    source: SourceConfig = Field(description="Where the audio comes from.")
    stall_timeout_s: float = Field(
        3.0,
        gt=0,
        description="A source that delivers nothing for this long is reported as stalled, "
        "closed and reopened; systemd's watchdog pings stop meanwhile.",
    )
    reopen_max_s: float = Field(
        30.0, gt=0, description="Longest wait between attempts to reopen a failed source."
    )
    max_backlog_s: float = Field(
        5.0,
        gt=0,
        description="Audio waiting for analysis beyond this is dropped (oldest first) and "
        "counted as dropped windows, so a slow CPU never blocks capture.",
    )


class ModelConfig(_Section):
    bundle: Path = Field(
        PRETRAINED_DIR / "cry-detector",
        description="Signed model bundle: a folder or a .tar.gz.",
    )
    trusted_keys: list[Path] = Field(
        default_factory=lambda: [DEFAULT_TRUSTED_KEYS],
        description="Ed25519 public keys (files or folders of *.pub) a bundle must be signed by.",
    )
    runtime: Literal["auto", "onnx", "tflite"] = Field(
        "auto",
        description="Inference runtime; auto takes onnxruntime, else TFLite, whichever the "
        "bundle carries and this machine has.",
    )
    threads: int = Field(1, ge=1, le=16, description="Threads the runtime may use.")


class DetectionConfig(_Section):
    hop_s: float = Field(
        0.25, gt=0, le=1, description="Seconds between analysed 1 s windows (one inference each)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per-label score thresholds overriding the bundle's, e.g. {cry = 0.999}.",
    )
    k: int = Field(2, ge=1, description="An episode starts when k of the last n windows reach it.")
    n: int = Field(3, ge=1, description="Smoothing window count for the k-of-n start rule.")
    release: int = Field(
        4, ge=1, description="Consecutive windows below threshold x hysteresis that end an episode."
    )
    hysteresis: float = Field(
        0.8, gt=0, le=1, description="Fraction of the threshold a score must fall below to count."
    )
    min_duration_s: float = Field(
        0.0,
        ge=0,
        description="Episodes shorter than this are not reported (their start is held back).",
    )
    cooldown_s: float = Field(
        0.0, ge=0, description="After an episode ends, the same label stays quiet this long."
    )
    update_interval_s: float = Field(
        1.0, gt=0, description="Seconds between `update` events while an episode lasts."
    )

    @model_validator(mode="after")
    def _k_within_n(self) -> Self:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) cannot exceed n ({self.n})")
        return self


class TlsConfig(_Section):
    ca_file: Path | None = Field(
        None,
        description="CA certificate(s) the broker's certificate must chain to; system CAs "
        "when unset.",
    )
    cert_file: Path | None = Field(None, description="Client certificate, for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key, for mutual TLS.")
    insecure: bool = Field(
        False, description="Skip the broker hostname check. For testing only; never in the field."
    )


class MqttConfig(_Section):
    host: str = Field("localhost", description="Broker hostname or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    prefix: str = Field("soundwarden", min_length=1, description="Topic prefix for every topic.")
    username: str | None = Field(None, description="Broker username.")
    password: str | None = Field(
        None,
        description="Broker password; better set SOUNDWARDEN_MQTT_PASSWORD in the environment.",
    )
    tls: TlsConfig | None = Field(
        None, description="Connect with TLS when this section is present."
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive, seconds.")
    reconnect_max_s: int = Field(
        30, ge=1, description="Longest wait between reconnect attempts (the backoff doubles)."
    )
    status_interval_s: float = Field(
        30.0, gt=0, description="Seconds between retained `status` heartbeats."
    )


class HomeAssistantConfig(_Section):
    enabled: bool = Field(True, description="Publish Home Assistant MQTT discovery.")
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's discovery prefix.")
    per_component: bool = Field(
        False,
        description="Publish one discovery topic per entity (Home Assistant before 2024.11) "
        "instead of one device discovery message.",
    )


class SpoolConfig(_Section):
    max_entries: int = Field(
        100_000,
        ge=1,
        description="Events and clip uploads kept while offline; beyond it the oldest are "
        "dropped, logged and counted.",
    )


class ClipsConfig(_Section):
    enabled: bool = Field(True, description="Record audio around every episode.")
    pre_roll_s: float = Field(2.0, ge=0, le=30, description="Seconds kept before an episode.")
    post_roll_s: float = Field(3.0, ge=0, le=30, description="Seconds kept after an episode.")
    max_clip_s: float = Field(
        60.0, gt=0, le=600, description="Longest clip; a longer episode's clip is cut here."
    )
    format: Literal["flac", "wav"] = Field("flac", description="File format of saved clips.")
    quota_mb: float = Field(
        200.0,
        gt=0,
        description="Disk space clips may use; over it the oldest uploaded clips are deleted "
        "first, then the oldest waiting ones (logged and counted).",
    )
    upload_url: str | None = Field(
        None,
        description="Cloud base URL (e.g. https://cloud.example:8000); clips are kept locally "
        "only when unset.",
    )
    token: str | None = Field(
        None, description="Device token for uploads; better set SOUNDWARDEN_DEVICE_TOKEN."
    )
    retry_max_s: float = Field(
        300.0, gt=0, description="Longest wait between upload retries (the backoff doubles)."
    )

    @model_validator(mode="after")
    def _token_with_url(self) -> Self:
        if self.upload_url and not self.token:
            raise ValueError(
                "upload_url is set but there is no device token: set clips.token or "
                "SOUNDWARDEN_DEVICE_TOKEN (from `soundwarden-cloud add-device`)"
            )
        return self


class UpdatesConfig(_Section):
    enabled: bool = Field(
        True,
        description="Take model updates the cloud sends on `<prefix>/<device>/model/set`: "
        "download, verify, shadow, switch, watch, roll back on trouble.",
    )
    max_bundle_mb: float = Field(32.0, gt=0, description="Largest bundle download accepted, MB.")
    shadow_s: float = Field(
        600.0,
        ge=0,
        description="Seconds of live audio the candidate is scored on next to the running "
        "model before it may replace it.",
    )
    min_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Fraction of shadowed windows on which both models must decide alike.",
    )
    max_event_ratio: float = Field(
        3.0,
        ge=1,
        description="The candidate (while shadowing) and the new model (on probation) may start "
        "at most this many times the running model's episodes, plus `event_slack`.",
    )
    event_slack: int = Field(
        2, ge=0, description="Episodes allowed beyond `max_event_ratio` (for a quiet room)."
    )
    probation_s: float = Field(
        3600.0,
        ge=0,
        description="Seconds after a switch during which an inference error, an unclean stop "
        "or an event-rate anomaly rolls back to the previous model.",
    )
    retry_max_s: float = Field(
        600.0, gt=0, description="Longest wait between download retries (the backoff doubles)."
    )
    keep_bundles: int = Field(
        2, ge=2, description="Installed bundles kept on disk (current and previous at least)."
    )


class EdgeConfig(_Section):
    device: str = Field(
        pattern=DEVICE_ID_PATTERN,
        description="Device id used in topics and events: lowercase letters, digits, - and _.",
    )
    data_dir: Path = Field(
        Path("/var/lib/soundwarden"), description="Where the spool database and clips live."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log verbosity."
    )
    audio: AudioConfig = Field(description="Audio source and capture watchdog.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model bundle.")
    detection: DetectionConfig = Field(
        default_factory=DetectionConfig, description="Windowing and episode rules."
    )
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="The MQTT broker.")
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant discovery."
    )
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="The durable outbox.")
    clips: ClipsConfig = Field(default_factory=ClipsConfig, description="Clips around episodes.")
    updates: UpdatesConfig = Field(
        default_factory=UpdatesConfig, description="Remote model updates."
    )

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool.sqlite"

    @property
    def clips_dir(self) -> Path:
        return self.data_dir / "clips"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Read, merge secrets from the environment, validate; ConfigError says what to fix."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    env = os.environ if environ is None else environ
    for variable, (section, key) in SECRET_ENV.items():
        if env.get(variable):
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][key] = env[variable]
    try:
        config = EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: " + describe_errors(exc)) from None
    # Relative paths in the file mean relative to the file, wherever the daemon was started.
    base = path.resolve().parent
    return config.model_copy(
        update={
            "data_dir": base / config.data_dir,
            "model": config.model.model_copy(
                update={
                    "bundle": base / config.model.bundle,
                    "trusted_keys": [base / key for key in config.model.trusted_keys],
                }
            ),
            "audio": _resolve_source(config.audio, base),
        }
    )


def _resolve_source(audio: AudioConfig, base: Path) -> AudioConfig:
    if isinstance(audio.source, FileSourceConfig):
        source = audio.source.model_copy(update={"path": base / audio.source.path})
        return audio.model_copy(update={"source": source})
    return audio


def describe_errors(exc: ValidationError) -> str:
    """One line per problem: the dotted key, what is wrong, and what belongs there."""
    lines = []
    for error in exc.errors():
        key, model, name = _locate(error["loc"])
        info = model.model_fields.get(name) if model else None
        help_text = (info.description if info else None) or "see deploy/edge.example.toml"
        if error["type"] == "extra_forbidden":
            known = ", ".join(model.model_fields) if model else "see deploy/edge.example.toml"
            lines.append(f"{key}: unknown key; remove it or fix its spelling (known here: {known})")
        elif error["type"] == "missing":
            lines.append(f"{key}: required; {help_text}")
        else:
            value = error.get("input")
            got = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{key or '(top level)'}: {error['msg']}{got}; {help_text}")
    return "\n  ".join(["invalid configuration:", *lines])


_SOURCE_MODELS: dict[str, type[BaseModel]] = {
    "microphone": MicrophoneSourceConfig,
    "file": FileSourceConfig,
    "stdin": StdinSourceConfig,
}


def _locate(loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None, str]:
    """Dotted key, the section model holding it and its name, from a pydantic error location
    (which names the chosen source type, e.g. audio.source.file.path, as a step of its own)."""
    names: list[str] = []
    model: type[BaseModel] | None = EdgeConfig
    parent: type[BaseModel] | None = None
    for part in loc:
        if names[-2:] == ["audio", "source"] and part in _SOURCE_MODELS and model is not None:
            model = _SOURCE_MODELS[str(part)]
            continue
        names.append(str(part))
        parent = model
        info = model.model_fields.get(str(part)) if model else None
        model = _model_of(info.annotation) if info else None
    return ".".join(names), parent, names[-1] if names else ""


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
