"""Raw 16-bit little-endian PCM on standard input, e.g. `arecord -t raw -f S16_LE ... |`.

Reads go to the file descriptor directly, after `select` says there is something: a buffered
read would block until a whole buffer arrived, and a pipe whose writer went quiet must give
empty reads, so the capture watchdog sees the stall. The descriptor is left in blocking mode
(it is shared with whoever started us) and is never closed, so a reopen after a stall finds it.
"""

from __future__ import annotations

import os
import select
import sys
from typing import BinaryIO, ClassVar

from edge.config import StdinSourceConfig
from edge.sources.base import AudioSource, PcmConverter, SourceError, empty
from models.audio import FloatArray


class StdinSource(AudioSource):
    kind: ClassVar[str] = "stdin"

    def __init__(
        self, config: StdinSourceConfig, rate: int, stream: BinaryIO | None = None
    ) -> None:
        super().__init__(config, rate)
        self.config = config
        self.name = "stdin"
        self._stream = sys.stdin.buffer if stream is None else stream
        self._read_bytes = 2 * config.channels * max(1, round(config.chunk_s * config.sample_rate))
        self._fd = -1
        self._converter: PcmConverter | None = None
        self._ended = False

    def open(self) -> None:
        try:
            self._fd = self._stream.fileno()
            os.fstat(self._fd)
        except (OSError, ValueError) as exc:
            raise SourceError(f"stdin cannot be read ({exc}); pipe raw PCM into it") from exc
        self._converter = PcmConverter(self.config.sample_rate, self.config.channels, self.rate)
        self._ended = False

    def read(self, timeout_s: float) -> FloatArray | None:
        if self._converter is None:
            raise SourceError("stdin is not open")
        if self._ended:
            return None
        try:
            ready, _, _ = select.select([self._fd], [], [], timeout_s)
            data = os.read(self._fd, self._read_bytes) if ready else None
        except OSError as exc:
            raise SourceError(f"stdin failed: {exc}") from exc
        if data is None:
            return empty()
        if not data:  # end of file: hand out what the resampler still holds, then None
            self._ended = True
            tail = self._converter.flush()
            return tail if len(tail) else None
        return self._converter.convert(data)

    def close(self) -> None:
        self._converter = None
