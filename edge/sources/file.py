"""A recording replayed as if it were a microphone: for demos, tests and checking a deployment.

The whole file is decoded, downmixed and resampled once at `open` (recordings worth replaying
are short). In real time, each chunk is due when the audio before it would have finished
playing, counted from the first read: a schedule rather than a sleep per chunk, so the time
spent downstream does not add up into drift.
"""

from __future__ import annotations

import time
from typing import ClassVar

from edge.config import FileSourceConfig
from edge.sources.base import AudioSource, SourceError, empty
from models.audio import AudioError, FloatArray, load_mono


class FileSource(AudioSource):
    kind: ClassVar[str] = "file"

    def __init__(self, config: FileSourceConfig, rate: int) -> None:
        super().__init__(config, rate)
        self.config = config
        self.name = str(config.path)
        self.live = config.realtime
        self._chunk = max(1, round(config.chunk_s * rate))
        self._samples: FloatArray | None = None
        self._position = 0
        self._delivered = 0  # samples handed out since the first read, loops included
        self._started_at: float | None = None

    def open(self) -> None:
        try:
            self._samples = load_mono(self.config.path, self.rate)
        except AudioError as exc:
            raise SourceError(f"audio file {exc}; check audio.source.path") from exc
        self._position = self._delivered = 0
        self._started_at = None

    def read(self, timeout_s: float) -> FloatArray | None:
        if self._samples is None:
            raise SourceError(f"audio file {self.name} is not open")
        if self._position >= len(self._samples):
            if not self.config.loop:
                return None
            self._position = 0
        if self.config.realtime:
            now = time.monotonic()
            if self._started_at is None:
                self._started_at = now
            wait = self._started_at + self._delivered / self.rate - now
            if wait > timeout_s:
                time.sleep(timeout_s)
                return empty()
            time.sleep(max(0.0, wait))
        chunk = self._samples[self._position : self._position + self._chunk]
        self._position += len(chunk)
        self._delivered += len(chunk)
        return chunk

    def close(self) -> None:
        self._samples = None
