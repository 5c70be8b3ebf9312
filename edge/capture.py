"""The capture thread: keeps audio coming whatever the source does, and says when it is not.

One thread owns the source. It reads in short slices and appends to a backlog bounded at
`max_backlog_s`; it never waits for the analysis loop, because a sound card that is not read in
time overruns. When the analysis falls behind, the oldest audio goes (the newest matters most),
and the next chunk handed out says how much was lost right before it. Only a source that is not
live (a file replayed as fast as possible) waits for room instead, so that all of it is analysed.

The source is watched: an error, or no audio for `stall_timeout_s`, gets it logged, closed and
reopened with exponential backoff (0.5 s doubling up to `reopen_max_s`), forever, since a USB
microphone may be plugged in again at any time; the very first open is retried the same way.
`audio_flowing()` is what the daemon's systemd watchdog pings hang on, so a capture that is
stuck beyond what this thread can repair (a driver hanging even in close) ends in a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edge.sources import AudioSource, SourceError
from models.audio import FloatArray

log = logging.getLogger(__name__)

State = Literal["starting", "running", "stalled", "reopening", "ended"]

READ_SLICE_S = 0.1  # how long one read may wait: bounds how late a stall or a stop is noticed
FIRST_RETRY_S = 0.5
DROP_LOG_INTERVAL_S = 10.0
STOP_JOIN_S = 5.0


@dataclass(frozen=True)
class Chunk:
    samples: FloatArray
    dropped_before: int  # samples discarded (backlog overflow) right before these


class Capture:
    def __init__(
        self,
        make_source: Callable[[], AudioSource],
        *,
        rate: int,
        stall_timeout_s: float,
        reopen_max_s: float,
        max_backlog_s: float,
    ) -> None:
        self._make_source = make_source
        self._rate = rate
        self._stall_timeout_s = stall_timeout_s
        self._reopen_max_s = reopen_max_s
        self._max_backlog = max(1, round(max_backlog_s * rate))
        self._cond = threading.Condition()  # guards everything below; `get` waits on it
        self._backlog: deque[FloatArray] = deque()
        self._backlog_samples = 0
        self._dropped_pending = 0  # dropped since the last chunk handed out
        self._dropped_unlogged = 0
        self._last_drop_log = -DROP_LOG_INTERVAL_S
        self._state: State = "starting"
        self._source: AudioSource | None = None
        self._last_audio_at: float | None = None
        self._dropped_samples = 0
        self._errors = 0
        self._retry_delay = FIRST_RETRY_S  # only the capture thread uses it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reading, close the source and wait for the thread (a few seconds at most)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(STOP_JOIN_S)
            if self._thread.is_alive():
                log.warning("audio source %s did not close within %.0f s", self.name, STOP_JOIN_S)

    def get(self, timeout_s: float) -> Chunk | None:
        """All audio waiting, oldest first; None when nothing came within `timeout_s`, or the
        stream has ended (see `ended`), or capture was stopped."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._backlog or self._state == "ended" or self._stop.is_set(), timeout_s
            )
            if not self._backlog:
                return None
            samples = np.concatenate(self._backlog)
            chunk = Chunk(samples, self._dropped_pending)
            self._backlog.clear()
            self._backlog_samples = self._dropped_pending = 0
            self._cond.notify_all()
            return chunk

    @property
    def state(self) -> State:
        with self._cond:
            return self._state

    @property
    def name(self) -> str:
        """The current source's name (a microphone's is its device's once opened)."""
        with self._cond:
            return self._source.name if self._source else ""

    @property
    def ended(self) -> bool:
        """The stream has ended and every sample of it has been handed out."""
        with self._cond:
            return self._state == "ended" and not self._backlog

    @property
    def last_audio_at(self) -> float | None:
        with self._cond:
            return self._last_audio_at

    def audio_flowing(self) -> bool:
        """Audio arrived within the stall timeout: the condition for systemd watchdog pings."""
        last = self.last_audio_at
        return last is not None and time.monotonic() - last < self._stall_timeout_s

    @property
    def dropped_samples(self) -> int:
        with self._cond:
            return self._dropped_samples

    @property
    def errors(self) -> int:
        """Failed opens, source errors and stalls so far."""
        with self._cond:
            return self._errors

    def _run(self) -> None:
        while not self._stop.is_set():
            source = None
            try:
                source = self._make_source()
                with self._cond:
                    self._source = source
                source.open()
                reason = self._pump(source)
            except SourceError as exc:
                reason = str(exc)
            if reason is not None:  # say so before closing: a broken device may hang in close
                with self._cond:
                    self._state = "stalled"
                    self._errors += 1
                log.error(
                    "audio source %s: %s; reopening in %.1f s", self.name, reason, self._retry_delay
                )
            if source is not None:
                source.close()
            if reason is None:
                return
            self._set_state("reopening")
            self._stop.wait(self._retry_delay)
            self._retry_delay = min(self._retry_delay * 2, self._reopen_max_s)

    def _pump(self, source: AudioSource) -> str | None:
        """Read until the stream ends or capture stops (None), or the source stalls (why)."""
        last_progress = time.monotonic()
        lost_before = source.dropped_samples
        while not self._stop.is_set():
            samples = source.read(READ_SLICE_S)
            # Audio the source lost itself is a gap like a backlog overflow: the analysis must
            # know, to keep its clock true. It lies about before what this read returned.
            lost, lost_before = source.dropped_samples - lost_before, source.dropped_samples
            if lost:
                self._count_dropped(lost)
            now = time.monotonic()
            if samples is None:
                self._set_state("ended")
                log.info("audio source %s: end of stream", source.name)
                return None
            if len(samples):
                self._append(source, samples)
                last_progress = time.monotonic()
            elif now - last_progress > self._stall_timeout_s:
                return f"no audio for {self._stall_timeout_s:g} s"
        return None

    def _append(self, source: AudioSource, samples: FloatArray) -> None:
        with self._cond:
            if not source.live:  # wait for room in the backlog: it loses nothing
                self._cond.wait_for(
                    lambda: (
                        self._backlog_samples + len(samples) <= self._max_backlog
                        or not self._backlog
                        or self._stop.is_set()
                    )
                )
            now = time.monotonic()
            if self._state != "running":
                if self._state == "starting":
                    log.info("capturing audio from %s", source.name)
                else:
                    log.info("audio from %s is flowing again", source.name)
                self._state = "running"
                self._retry_delay = FIRST_RETRY_S  # it works again: the next failure retries soon
            self._last_audio_at = now
            self._backlog.append(samples)
            self._backlog_samples += len(samples)
            excess = self._backlog_samples - self._max_backlog
            while excess > 0:
                oldest = self._backlog[0]
                if len(oldest) <= excess:
                    self._backlog.popleft()
                    dropped = len(oldest)
                else:
                    self._backlog[0] = oldest[excess:]
                    dropped = excess
                excess -= dropped
                self._backlog_samples -= dropped
                self._count_dropped(dropped)
            self._cond.notify_all()

    def _count_dropped(self, samples: int) -> None:
        """Audio lost before analysis: reported with the next chunk, logged at most every
        DROP_LOG_INTERVAL_S."""
        with self._cond:
            self._dropped_pending += samples
            self._dropped_samples += samples
            self._dropped_unlogged += samples
            now = time.monotonic()
            if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
                log.warning(
                    "dropped %.2f s of audio (analysis behind, or the device overran); the "
                    "backlog holds at most %.1f s",
                    self._dropped_unlogged / self._rate,
                    self._max_backlog / self._rate,
                )
                self._dropped_unlogged = 0
                self._last_drop_log = now

    def _set_state(self, state: State) -> None:
        with self._cond:
            self._state = state
            self._cond.notify_all()
