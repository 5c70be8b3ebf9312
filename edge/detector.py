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
from typing import Literal

import numpy as np

from models.audio import level_dbfs
from models.contract import EventPayload, ModelRef
from models.detection import EpisodeTracker
from models.frontend import FloatArray, StreamingLogMel
from models.inference import BundleModel


class DetectorConfigError(ValueError):
    pass


@dataclass
class _Episode:
    id: str
    started_at: datetime
    max_score: float
    last_update: datetime


class Detector:
    def __init__(
        self,
        model: BundleModel,
        *,
        device: str,
        thresholds: dict[str, float] | None = None,
        hop_s: float = 0.25,
        update_interval_s: float = 1.0,
        origin: datetime | None = None,
    ) -> None:
        manifest = model.manifest
        unknown = sorted(set(thresholds or {}) - set(manifest.labels))
        if unknown:
            raise DetectorConfigError(
                f"threshold for unknown label(s) {unknown}; the bundle's labels are "
                f"{manifest.labels}"
            )
        features = manifest.features
        self._hop = round(hop_s * features.sample_rate)
        if self._hop <= 0 or self._hop % features.hop_length:
            raise DetectorConfigError(
                f"hop {hop_s} s must be a positive multiple of the front end's "
                f"{features.hop_length / features.sample_rate * 1000:.0f} ms frame hop"
            )
        self._model = model
        self._device = device
        self._rate = features.sample_rate
        self._window = features.window_samples
        self._stream = StreamingLogMel(features)
        self._model_ref = ModelRef(name=manifest.name, version=manifest.version)
        merged = {**manifest.thresholds, **(thresholds or {})}
        self._trackers = {label: EpisodeTracker(t) for label, t in merged.items()}
        self._column = {
            label: (manifest.labels.index(label) if manifest.task == "classification" else 0)
            for label in merged
        }
        self._recent: dict[str, deque[tuple[datetime, float]]] = {
            label: deque(maxlen=tracker.n) for label, tracker in self._trackers.items()
        }
        self._episodes: dict[str, _Episode] = {}
        self._update_interval = timedelta(seconds=update_interval_s)
        self._origin = origin or datetime.now(UTC)
        self._pending = np.empty(0, dtype=np.float32)
        self._audio = np.zeros(self._window, dtype=np.float32)
        self._consumed = 0  # samples fed to the front end so far

    @property
    def thresholds(self) -> dict[str, float]:
        return {label: tracker.threshold for label, tracker in self._trackers.items()}

    def push(self, samples: FloatArray) -> list[EventPayload]:
        """Feed audio; returns the events raised by every hop it completes."""
        self._pending = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32)))
        events: list[EventPayload] = []
        while self._pending.shape[0] >= self._hop:
            hop, self._pending = self._pending[: self._hop], self._pending[self._hop :]
            self._stream.push(hop)
            self._audio = np.concatenate((self._audio[self._hop :], hop))
            self._consumed += self._hop
            if self._stream.ready:
                events += self._score_window()
        return events

    def flush(self) -> list[EventPayload]:
        """End every open episode (end of input, shutdown)."""
        end = self._at(self._consumed)
        events = [
            self._end(label, end, self._episodes[label].max_score, level_dbfs(self._audio))
            for label in list(self._episodes)
        ]
        for tracker in self._trackers.values():
            tracker.active = False
        return events

    def _at(self, sample: int) -> datetime:
        return self._origin + timedelta(seconds=sample / self._rate)

    def _score_window(self) -> list[EventPayload]:
        scores = self._model.scores(self._stream.window()[None])[0]
        level = level_dbfs(self._audio)
        window_start, window_end = self._at(self._consumed - self._window), self._at(self._consumed)
        events = []
        for label, tracker in self._trackers.items():
            score = float(scores[self._column[label]])
            self._recent[label].append((window_start, score))
            step = tracker.update(score)
            if step == "start":
                over = [t for t, s in self._recent[label] if s >= tracker.threshold]
                episode = _Episode(uuid.uuid4().hex, over[0], score, window_end)
                self._episodes[label] = episode
                events.append(self._payload("start", label, score, episode, level))
            elif step == "end":
                events.append(self._end(label, window_end, score, level))
            elif label in self._episodes:
                episode = self._episodes[label]
                episode.max_score = max(episode.max_score, score)
                if window_end - episode.last_update >= self._update_interval:
                    episode.last_update = window_end
                    events.append(self._payload("update", label, score, episode, level))
        return events

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
            level_dbfs=round(level, 1) if np.isfinite(level) else -120.0,
            model=self._model_ref,
            device=self._device,
        )
