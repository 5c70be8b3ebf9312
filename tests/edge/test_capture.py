from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.capture import Capture, Chunk
from edge.config import FileSourceConfig, StdinSourceConfig
from edge.sources import AudioSource, SourceError
from edge.sources.file import FileSource
from edge.sources.stdin import StdinSource
from models.audio import FloatArray, load_mono

RATE = 16000


def wait_for(condition: Callable[[], bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def drain(capture: Capture, timeout_s: float = 15) -> list[Chunk]:
    """Every chunk until the stream has ended and all of it was handed out."""
    chunks: list[Chunk] = []
    deadline = time.monotonic() + timeout_s
    while not capture.ended:
        assert time.monotonic() < deadline, "the stream never ended"
        chunk = capture.get(0.1)
        if chunk is not None:
            chunks.append(chunk)
    return chunks


@pytest.fixture()
def capture_factory() -> Iterator[Callable[..., Capture]]:
    started: list[Capture] = []

    def make(source: Callable[[], AudioSource], **settings: float) -> Capture:
        options = {"stall_timeout_s": 0.5, "reopen_max_s": 0.5, "max_backlog_s": 5.0}
        capture = Capture(source, rate=RATE, **{**options, **settings})
        capture.start()
        started.append(capture)
        return capture

    yield make
    for capture in started:
        capture.stop()


class PausingWriter:
    """16-bit PCM into a pipe in real time, 50 ms at a time, until paused or finished."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.playing = threading.Event()
        self.playing.set()
        self._finish = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        block = np.full(RATE // 20, 1000, dtype="<i2").tobytes()
        while not self._finish.is_set():
            if self.playing.wait(0.05):
                os.write(self._fd, block)
                time.sleep(0.05)
        os.close(self._fd)

    def finish(self) -> None:
        self._finish.set()
        self._thread.join(10)


def test_a_stalled_source_is_reported_reopened_and_recovers(
    capture_factory: Callable[..., Capture], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.capture")
    read_fd, write_fd = os.pipe()
    config = StdinSourceConfig(type="stdin", sample_rate=RATE, channels=1)
    writer = PausingWriter(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        try:
            capture = capture_factory(lambda: StdinSource(config, RATE, stream=reader))
            wait_for(lambda: capture.state == "running" and capture.audio_flowing())
            assert capture.name == "stdin" and capture.errors == 0

            writer.playing.clear()  # the writer is still there, but silent
            wait_for(lambda: not capture.audio_flowing())
            wait_for(lambda: capture.state in ("stalled", "reopening"))
            wait_for(lambda: capture.errors >= 1)
            assert any(
                r.levelno == logging.ERROR and "stdin" in r.message and "no audio" in r.message
                for r in caplog.records
            )

            writer.playing.set()
            wait_for(lambda: capture.state == "running" and capture.audio_flowing())
            assert any("flowing again" in r.message for r in caplog.records)
        finally:
            writer.finish()
        # End of stream: the capture ends once everything was handed out.
        drain(capture)
        assert capture.state == "ended" and capture.get(0.1) is None


class FlakyFile(FileSource):
    """A file that cannot be opened the first `failures` times, as a microphone plugged in
    late; it records when each open was tried and whether it was closed."""

    def __init__(self, config: FileSourceConfig, failures: int, attempts: list[float]) -> None:
        super().__init__(config, RATE)
        self._failures = failures
        self.attempts = attempts
        self.closed = False

    def open(self) -> None:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self._failures:
            raise SourceError(f"{self.name}: not plugged in (attempt {len(self.attempts)})")
        super().open()

    def close(self) -> None:
        self.closed = True
        super().close()


def write_noise(path: Path, seconds: float) -> FloatArray:
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, round(seconds * RATE))
    sf.write(path, samples.astype(np.float32), RATE, subtype="FLOAT")
    return load_mono(path, RATE)


def test_a_failing_open_is_retried_with_backoff(
    tmp_path: Path, capture_factory: Callable[..., Capture], caplog: pytest.LogCaptureFixture
) -> None:
    write_noise(tmp_path / "noise.wav", 1.0)
    config = FileSourceConfig(type="file", path=tmp_path / "noise.wav", loop=True)
    attempts: list[float] = []
    sources: list[FlakyFile] = []

    def make() -> FlakyFile:
        sources.append(FlakyFile(config, failures=4, attempts=attempts))
        return sources[-1]

    capture = capture_factory(make, reopen_max_s=1.0)
    wait_for(lambda: capture.state == "running")
    assert len(attempts) == 5 and capture.errors == 4
    failures = [r for r in caplog.records if "not plugged in" in r.message]
    assert len(failures) == 4 and all(r.levelno == logging.ERROR for r in failures)
    gaps = np.diff(attempts)
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95  # 0.5 s, doubling...
    assert gaps[3] < 3.0  # ...up to reopen_max_s, not on to 4 s
    assert all(source.closed for source in sources[:-1])
    assert capture.get(5) is not None

    capture.stop()
    assert sources[-1].closed


def test_backlog_overflow_drops_the_oldest_audio_and_counts_it(
    capture_factory: Callable[..., Capture], caplog: pytest.LogCaptureFixture
) -> None:
    pcm = np.random.default_rng(0).integers(-9000, 9000, 3 * RATE, dtype="<i2")
    read_fd, write_fd = os.pipe()

    def play() -> None:  # three seconds at once, more than the pipe holds
        with os.fdopen(write_fd, "wb") as writer:
            writer.write(pcm.tobytes())

    config = StdinSourceConfig(type="stdin", sample_rate=RATE, channels=1)
    with os.fdopen(read_fd, "rb") as reader:
        threading.Thread(target=play, daemon=True).start()
        capture = capture_factory(lambda: StdinSource(config, RATE, stream=reader), max_backlog_s=1)
        wait_for(lambda: capture.state == "ended")  # and nobody read meanwhile
        chunks = drain(capture)

    delivered = np.concatenate([chunk.samples for chunk in chunks])
    assert chunks[0].dropped_before > 0
    assert sum(chunk.dropped_before for chunk in chunks) == capture.dropped_samples
    assert len(delivered) + capture.dropped_samples == len(pcm)
    np.testing.assert_array_equal(delivered, pcm[-RATE:] / np.float32(32768))  # the newest second
    assert any(r.levelno == logging.WARNING and "dropped" in r.message for r in caplog.records)


def test_a_file_replayed_fast_waits_for_the_analysis_instead(
    tmp_path: Path, capture_factory: Callable[..., Capture]
) -> None:
    audio = write_noise(tmp_path / "noise.wav", 3.0)
    config = FileSourceConfig(type="file", path=tmp_path / "noise.wav", realtime=False)
    capture = capture_factory(lambda: FileSource(config, RATE), max_backlog_s=0.5)
    time.sleep(0.3)  # nobody reads meanwhile: the source must wait, not drop
    chunks = drain(capture)
    assert capture.dropped_samples == 0 and all(c.dropped_before == 0 for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), audio)


class OverrunningFile(FileSource):
    """A file that, like a sound card whose queue overflowed, loses a tenth of a second once."""

    def read(self, timeout_s: float) -> FloatArray | None:
        samples = super().read(timeout_s)
        if self._position >= RATE and not self.dropped_samples:
            self.dropped_samples = RATE // 10
        return samples


def test_audio_the_source_lost_is_reported_as_a_gap(
    tmp_path: Path, capture_factory: Callable[..., Capture]
) -> None:
    write_noise(tmp_path / "noise.wav", 2.0)
    config = FileSourceConfig(type="file", path=tmp_path / "noise.wav", realtime=False)
    capture = capture_factory(lambda: OverrunningFile(config, RATE))
    chunks = drain(capture)
    assert sum(chunk.dropped_before for chunk in chunks) == RATE // 10 == capture.dropped_samples
