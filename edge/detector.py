"""Audio in, events out: the edge's detection loop.

Mono 16 kHz samples of any chunk size go in; every hop (0.25 s by default) the streaming front
end adds only its new frames, the bundle scores the latest 1 s window through whichever runtime
was chosen, and per label an `EpisodeTracker` (the same rules `evaluate` counts false alarms
with) decides when an episode starts and ends. Episodes become `EventPayload`s: `start`, an
`update` every `update_interval_s` while it lasts, and `end`.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np

from edge.config import DetectionConfig, ModelConfig
from models.audio import level_dbfs
from models.bundle import Bundle, load_bundle
from models.contract import EventPayload, ModelRef
from models.detection import EpisodeTracker
from models.frontend import FloatArray, StreamingLogMel
from models.inference import BundleModel, choose_runtime
from models.signing import TrustedKeys


class DetectorConfigError(ValueError):
    pass


def load_model(config: ModelConfig, path: Path | None = None) -> tuple[Bundle, BundleModel]:
    """The configured bundle (or the one at `path`), verified against the trusted keys, on the
    configured runtime (or the first usable one); raises BundleError or
    RuntimeUnavailableError with the reason."""
    bundle = load_bundle(path or config.bundle, TrustedKeys.from_paths(config.trusted_keys))
    runtime = choose_runtime(config.runtime, bundle)
    return bundle, BundleModel(bundle, runtime=runtime, threads=config.threads)


@dataclass
class _Episode:
    id: str
    started_at: datetime
    max_score: float
    last_update: datetime
    reported: bool = False  # `start` published (held back until min_duration_s is reached)
    ending_at: datetime | None = None  # quiet since then; ends unless it returns within cooldown


class Detector:
    """Scores a stream and turns its windows into episode events.

    `rules.min_duration_s` holds an episode's `start` back until it has lasted that long (a
    shorter one is never reported); `rules.cooldown_s` keeps an episode open that long after it
    went quiet, so a cry that pauses for breath stays one episode instead of a burst of them.
    """

    def __init__(
        self,
        model: BundleModel,
        *,
        device: str,
        rules: DetectionConfig | None = None,
        origin: datetime | None = None,
    ) -> None:
        rules = rules or DetectionConfig()
        manifest = model.manifest
        unknown = sorted(set(rules.thresholds) - set(manifest.labels))
        if unknown:
            raise DetectorConfigError(
                f"threshold for unknown label(s) {unknown}; the bundle's labels are "
                f"{manifest.labels}"
            )
        features = manifest.features
        self.hop = round(rules.hop_s * features.sample_rate)
        if self.hop <= 0 or self.hop % features.hop_length:
            raise DetectorConfigError(
                f"hop {rules.hop_s} s must be a positive multiple of the front end's "
                f"{features.hop_length / features.sample_rate * 1000:.0f} ms frame hop"
            )
        self._model = model
        self._rules = rules
        self._device = device
        self._features = features
        self._rate = features.sample_rate
        self._window = features.window_samples
        self._stream = StreamingLogMel(features)
        self._model_ref = ModelRef(name=manifest.name, version=manifest.version)
        merged = {**manifest.thresholds, **rules.thresholds}
        self._trackers = {
            label: EpisodeTracker(
                t, k=rules.k, n=rules.n, release=rules.release, hysteresis=rules.hysteresis
            )
            for label, t in merged.items()
        }
        self._column = {
            label: (manifest.labels.index(label) if manifest.task == "classification" else 0)
            for label in merged
        }
        self._recent: dict[str, deque[tuple[datetime, float]]] = {
            label: deque(maxlen=tracker.n) for label, tracker in self._trackers.items()
        }
        self._episodes: dict[str, _Episode] = {}
        self._update_interval = timedelta(seconds=rules.update_interval_s)
        self._min_duration = timedelta(seconds=rules.min_duration_s)
        self._cooldown = timedelta(seconds=rules.cooldown_s)
        self.origin = origin or datetime.now(UTC)
        self._pending = np.empty(0, dtype=np.float32)
        self._audio = np.zeros(self._window, dtype=np.float32)
        self.consumed = 0  # samples fed to the front end (or skipped) so far
        self.windows = 0  # windows scored
        self.level_dbfs: float | None = None  # of the latest scored window
        # (window end sample, labels over threshold) per scored window, for whoever compares
        # two models on one stream (shadowing); None keeps nothing.
        self.decisions: list[tuple[int, frozenset[str]]] | None = None
        self.episodes_started = 0

    def successor(self, model: BundleModel) -> Detector:
        """A detector for `model` on this one's stream: same clock and hop grid, fed from the
        same point on; its front end fills during the next second. Raises
        DetectorConfigError when the rules do not fit the model."""
        other = Detector(model, device=self._device, rules=self._rules, origin=self.origin)
        other.consumed = self.consumed
        other._pending = self._pending.copy()
        return other

    @property
    def thresholds(self) -> dict[str, float]:
        return {label: tracker.threshold for label, tracker in self._trackers.items()}

    @property
    def model(self) -> ModelRef:
        return self._model_ref

    def push(self, samples: FloatArray) -> list[EventPayload]:
        """Feed audio; returns the events raised by every hop it completes."""
        self._pending = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32)))
        events: list[EventPayload] = []
        while self._pending.shape[0] >= self.hop:
            hop, self._pending = self._pending[: self.hop], self._pending[self.hop :]
            self._stream.push(hop)
            self._audio = np.concatenate((self._audio[self.hop :], hop))
            self.consumed += self.hop
            if self._stream.ready:
                events += self._score_window()
        return events

    def skip(self, n_samples: int) -> int:
        """Audio was lost (capture overran analysis): keep the clock true and restart the front
        end, whose next window needs a full second of new audio. Returns the windows lost."""
        lost = n_samples + self._pending.shape[0]
        self.consumed += lost
        self._pending = np.empty(0, dtype=np.float32)
        self._stream = StreamingLogMel(self._features)
        self._audio[:] = 0
        # The hops lost, plus those the front end now spends refilling its first window.
        return -(-lost // self.hop) + self._window // self.hop - 1

    def flush(self) -> list[EventPayload]:
        """End every open episode (end of input, shutdown)."""
        now = self._at(self.consumed)
        events = []
        for label in list(self._episodes):
            episode = self._episodes[label]
            level = self.level_dbfs if self.level_dbfs is not None else -120.0
            if episode.reported:
                ended = episode.ending_at or now
                events.append(self._end(label, ended, episode.max_score, level))
            else:
                del self._episodes[label]
        for tracker in self._trackers.values():
            tracker.active = False
        return events

    def _at(self, sample: int) -> datetime:
        return self.origin + timedelta(seconds=sample / self._rate)

    def _score_window(self) -> list[EventPayload]:
        scores = self._model.scores(self._stream.window()[None])[0]
        self.windows += 1
        measured = level_dbfs(self._audio)
        level = round(measured, 1) if np.isfinite(measured) else -120.0
        self.level_dbfs = level
        window_start, window_end = self._at(self.consumed - self._window), self._at(self.consumed)
        events = []
        over = []
        for label, tracker in self._trackers.items():
            score = float(scores[self._column[label]])
            self._recent[label].append((window_start, score))
            events += self._step(label, tracker.update(score), score, level, window_end)
            if score >= tracker.threshold:
                over.append(label)
        if self.decisions is not None:
            self.decisions.append((self.consumed, frozenset(over)))
        self.episodes_started += sum(e.type == "start" for e in events)
        return events

    def _step(
        self, label: str, step: str | None, score: float, level: float, now: datetime
    ) -> list[EventPayload]:
        episode = self._episodes.get(label)
        if step == "start":
            if episode is not None:  # it came back within the cooldown: same episode
                episode.ending_at = None
            else:
                threshold = self._trackers[label].threshold
                over = [t for t, s in self._recent[label] if s >= threshold]
                episode = self._episodes[label] = _Episode(uuid.uuid4().hex, over[0], score, now)
        if episode is None:
            return []
        episode.max_score = max(episode.max_score, score)
        if step == "end":
            if not episode.reported:  # shorter than min_duration_s: never happened
                del self._episodes[label]
                return []
            episode.ending_at = now
        if episode.ending_at is not None:
            if now - episode.ending_at >= self._cooldown:
                return [self._end(label, episode.ending_at, score, level)]
            return []
        if not episode.reported:
            if now - episode.started_at < self._min_duration:
                return []
            episode.reported, episode.last_update = True, now
            return [self._payload("start", label, score, episode, level)]
        if now - episode.last_update >= self._update_interval:
            episode.last_update = now
            return [self._payload("update", label, score, episode, level)]
        return []

    def _end(self, label: str, at: datetime, score: float, level: float) -> EventPayload:
        episode = self._episodes.pop(label)
        return self._payload("end", label, score, episode, level, ended_at=at)

    def _payload(
        self,
        kind: Literal["start", "update", "end"],
        label: str,
        score: float,
        episode: _Episode,
        level: float,
        ended_at: datetime | None = None,
    ) -> EventPayload:
        return EventPayload(
            id=episode.id,
            type=kind,
            label=label,
            score=round(score, 6),
            max_score=round(episode.max_score, 6),
            started_at=episode.started_at,
            ended_at=ended_at,
            level_dbfs=level,
            model=self._model_ref,
            device=self._device,
        )
