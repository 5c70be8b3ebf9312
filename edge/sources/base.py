"""What every audio source promises the capture thread.

A source hides where the audio comes from (a sound card, a file, a pipe) and always hands out
mono float32 at the model's rate, so nothing downstream knows or cares. `read` never blocks
longer than it is told to: the capture thread must keep noticing a silent device (the watchdog)
and a request to stop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
import soxr

from edge.config import SourceConfig
from models.audio import FloatArray, Int16Array, int16_to_float, to_mono


class SourceError(RuntimeError):
    """The source cannot be opened or has failed; the message names it, says why and what to do."""


class AudioSource(ABC):
    kind: ClassVar[str]
    name: str
    # A live source (a sound card, a pipe from one) overruns when it is not read in time, so
    # capture drops audio rather than wait for the analysis; a file replayed as fast as
    # possible is not live: it is read only as fast as the analysis takes it, and nothing is lost.
    live: bool = True
    # Samples (at `rate`) the source itself lost before `read` could hand them out, e.g. a
    # sound card's queue overflowing; capture counts them with its own drops.
    dropped_samples: int = 0

    def __init__(self, config: SourceConfig, rate: int) -> None:
        self.rate = rate

    @abstractmethod
    def open(self) -> None:
        """Acquire the device or file; raises SourceError."""

    @abstractmethod
    def read(self, timeout_s: float) -> FloatArray | None:
        """Mono float32 at `rate`, of any length: empty when nothing arrived within `timeout_s`,
        None once the stream has ended. Raises SourceError when the device failed."""

    @abstractmethod
    def close(self) -> None:
        """Release everything; safe to call twice, or after a failed `open`."""


def empty() -> FloatArray:
    return np.zeros(0, dtype=np.float32)


class PcmConverter:
    """Interleaved int16 PCM bytes in any pieces -> mono float32 at `out_rate`.

    Pipes and sound cards cut the byte stream anywhere, so a partial frame is kept for the next
    piece; the streaming resampler carries its filter state across pieces, so resampling chunk
    by chunk has no clicks at the boundaries (resampling each chunk alone would).
    """

    def __init__(self, in_rate: int, channels: int, out_rate: int) -> None:
        self._frame_bytes = 2 * channels
        self._channels = channels
        self._partial = b""
        self._resampler = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
            if in_rate != out_rate
            else None
        )

    def convert(self, data: bytes) -> FloatArray:
        data = self._partial + data
        whole = len(data) - len(data) % self._frame_bytes
        self._partial = data[whole:]
        pcm: Int16Array = np.frombuffer(data[:whole], dtype="<i2").reshape(-1, self._channels)
        mono = to_mono(int16_to_float(pcm))
        return self._resample(mono, last=False)

    def flush(self) -> FloatArray:
        """The resampler's last samples, at the end of the stream."""
        return self._resample(empty(), last=True)

    def _resample(self, mono: FloatArray, *, last: bool) -> FloatArray:
        if self._resampler is None:
            return mono
        out: FloatArray = self._resampler.resample_chunk(mono, last=last)
        return out.astype(np.float32, copy=False)
