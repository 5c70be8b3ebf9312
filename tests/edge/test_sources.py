from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from edge.config import FileSourceConfig, MicrophoneSourceConfig, StdinSourceConfig
from edge.sources import SOURCES, AudioSource, SourceError, create_source
from edge.sources.stdin import StdinSource
from tests import alsa
from tests.conftest import REPO

RATE = 16000
NATIVE = alsa.NATIVE_RATE
TONE_HZ = 1000.0
LEVELS = (0.5, 0.1)  # left, right: the mono downmix is their mean
MONO_RMS = float(np.mean(LEVELS) / np.sqrt(2))


def stereo_tone(start: int, frames: int, rate: int = NATIVE) -> npt.NDArray[np.int16]:
    """Frames [start, start + frames) of a 1 kHz sine, louder on the left than on the right."""
    tone = np.sin(2 * np.pi * TONE_HZ * np.arange(start, start + frames) / rate)
    return np.round(np.outer(tone, LEVELS) * 32767).astype("<i2")


def check_tone(mono: npt.NDArray[np.float32]) -> None:
    """A clean 1 kHz sine at the downmix level: chunks lost, repeated or misaligned on the way
    would spread energy away from the peak, a wrong rate would move it."""
    x = mono[RATE // 10 :].astype(np.float64)  # past the resampler's start-up
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    peak = int(np.argmax(spectrum))
    assert peak * RATE / len(x) == pytest.approx(TONE_HZ, abs=5)
    width = round(20 * len(x) / RATE)  # +-20 Hz
    assert spectrum[peak - width : peak + width].sum() > 0.99 * spectrum.sum()
    assert float(np.sqrt(np.mean(x**2))) == pytest.approx(MONO_RMS, rel=0.03)


def read_all(source: AudioSource, timeout_s: float = 30) -> list[npt.NDArray[np.float32]]:
    """Every read until the end of the stream (empty reads included)."""
    reads: list[npt.NDArray[np.float32]] = []
    deadline = time.monotonic() + timeout_s
    while (chunk := source.read(0.1)) is not None:
        reads.append(chunk)
        assert time.monotonic() < deadline, "the stream never ended"
    return reads


# -- microphone: PyAudio over an ALSA capture device fed from a FIFO (no sound card here) -----

MIC_CHUNK_S = alsa.PERIOD_S

MIC_SCRIPT = """
import json, sys, time
import numpy as np
from edge.config import MicrophoneSourceConfig
from edge.sources import SourceError, create_source

def config(device, **overrides):
    return MicrophoneSourceConfig(
        type="microphone", device=device, chunk_s=float(sys.argv[2]), **overrides
    )

def refusal(config):
    try:
        create_source(config, 16000).open()
    except SourceError as exc:
        return str(exc)

unknown = refusal(config("no such mic"))
too_wide = refusal(config("soundwarden_test_mic", channels=4))
source = create_source(config("SOUNDWARDEN_TEST"), 16000)
source.open()
pieces, deadline = [], time.monotonic() + 30
while sum(map(len, pieces)) < 24000 and time.monotonic() < deadline:
    pieces.append(source.read(0.5))
source.close()
np.save(sys.argv[1], np.concatenate(pieces))
print(json.dumps({"name": source.name, "native_rate": source.native_rate,
                  "channels": source.channels, "unknown": unknown, "too_wide": too_wide}))
"""


@pytest.fixture()
def alsa_home(tmp_path: Path) -> Iterator[Path]:
    pytest.importorskip("pyaudio", reason="the mic extra (PyAudio) is part of the test install")
    writer = alsa.install(tmp_path, stereo_tone)
    try:
        yield tmp_path
    finally:
        writer.stop()


def test_microphone_opens_natively_and_delivers_16k_mono(alsa_home: Path) -> None:
    # PortAudio reads HOME's .asoundrc when it starts, hence a fresh process with that HOME.
    out = alsa_home / "audio.npy"
    result = subprocess.run(
        [sys.executable, "-c", MIC_SCRIPT, str(out), str(MIC_CHUNK_S)],
        env={**os.environ, "HOME": str(alsa_home)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    # Matched case-insensitively by part of the name, opened at the device's rate and width.
    assert report["name"] == "soundwarden_test_mic"
    assert (report["native_rate"], report["channels"]) == (NATIVE, 2)
    check_tone(np.load(out))
    unknown = report["unknown"]
    assert "'no such mic': no such input" in unknown
    assert "'soundwarden_test_mic'" in unknown and "soundwarden-edge devices" in unknown
    assert "cannot open it at 44100 Hz with 4 channel(s)" in report["too_wide"]


def test_the_registry_maps_each_type_to_its_source(tmp_path: Path) -> None:
    assert set(SOURCES) == {"microphone", "file", "stdin"}
    configs: list[MicrophoneSourceConfig | FileSourceConfig | StdinSourceConfig] = [
        MicrophoneSourceConfig(type="microphone"),
        FileSourceConfig(type="file", path=tmp_path / "a.wav"),
        StdinSourceConfig(type="stdin"),
    ]
    for config in configs:
        source = create_source(config, RATE)
        assert source.kind == config.type and source.rate == RATE


# -- file ---------------------------------------------------------------------------------


@pytest.fixture()
def stereo_wav(tmp_path: Path) -> Path:
    """Two seconds of the stereo tone at 44.1 kHz."""
    path = tmp_path / "tone.wav"
    sf.write(path, stereo_tone(0, 2 * NATIVE), NATIVE, subtype="PCM_16")
    return path


def test_file_in_real_time_is_paced_and_resampled(stereo_wav: Path) -> None:
    source = create_source(FileSourceConfig(type="file", path=stereo_wav), RATE)
    source.open()
    started = time.monotonic()
    reads = read_all(source)
    elapsed = time.monotonic() - started
    source.close()
    audio = np.concatenate(reads)
    assert len(audio) == 2 * RATE
    assert elapsed > 1.5  # two seconds of audio take about two seconds
    check_tone(audio)


def test_file_fast_mode_never_waits(stereo_wav: Path) -> None:
    config = FileSourceConfig(type="file", path=stereo_wav, realtime=False, chunk_s=0.1)
    source = create_source(config, RATE)
    source.open()
    started = time.monotonic()
    reads = read_all(source)
    assert time.monotonic() - started < 1.5
    assert [len(r) for r in reads] == [RATE // 10] * 20
    assert source.read(0.1) is None  # and stays ended


def test_file_loop_starts_again_at_the_end(stereo_wav: Path) -> None:
    config = FileSourceConfig(type="file", path=stereo_wav, realtime=False, loop=True)
    source = create_source(config, RATE)
    source.open()
    pieces: list[npt.NDArray[np.float32]] = []
    while sum(map(len, pieces)) < 5 * RATE:
        chunk = source.read(0.1)
        assert chunk is not None
        pieces.append(chunk)
    audio = np.concatenate(pieces)
    np.testing.assert_array_equal(audio[2 * RATE : 4 * RATE], audio[: 2 * RATE])


def test_unreadable_file_is_a_source_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all")
    for path in (garbage, tmp_path / "missing.wav"):
        source = create_source(FileSourceConfig(type="file", path=path), RATE)
        with pytest.raises(SourceError, match=str(path)):
            source.open()
        source.close()


# -- stdin ----------------------------------------------------------------------------------


@dataclass
class Pipe:
    """A pipe standing in for standard input."""

    reader: BinaryIO
    writer: int
    writer_open: bool = True

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.writer, view) :]

    def close_writer(self) -> None:
        if self.writer_open:
            self.writer_open = False
            os.close(self.writer)


@pytest.fixture()
def pipe() -> Iterator[Pipe]:
    read_fd, write_fd = os.pipe()
    pipe = Pipe(os.fdopen(read_fd, "rb"), write_fd)
    try:
        yield pipe
    finally:
        pipe.close_writer()
        pipe.reader.close()


def stdin_source(pipe: Pipe, sample_rate: int, channels: int) -> StdinSource:
    config = StdinSourceConfig(type="stdin", sample_rate=sample_rate, channels=channels)
    source = StdinSource(config, RATE, stream=pipe.reader)
    source.open()
    return source


def test_stdin_downmixes_and_resamples_44k_stereo(pipe: Pipe) -> None:
    source = stdin_source(pipe, NATIVE, 2)

    def play() -> None:  # more than the pipe holds, so from another thread
        pipe.write(stereo_tone(0, NATIVE).tobytes())
        pipe.close_writer()

    writer = threading.Thread(target=play)
    writer.start()
    audio = np.concatenate(read_all(source))
    writer.join()
    assert abs(len(audio) - RATE) <= 1  # the resampler's tail is flushed at the end
    check_tone(audio)


def test_stdin_silence_gives_empty_reads_then_eof_gives_none(pipe: Pipe) -> None:
    source = stdin_source(pipe, RATE, 1)
    started = time.monotonic()
    silent = source.read(0.2)
    assert silent is not None and len(silent) == 0
    assert time.monotonic() - started >= 0.15  # it waited, as told
    pipe.write(np.zeros(800, dtype="<i2").tobytes())
    heard = source.read(5)
    assert heard is not None and len(heard) == 800
    pipe.close_writer()
    assert source.read(5) is None
    assert source.read(5) is None


def test_stdin_reassembles_frames_split_across_writes(pipe: Pipe) -> None:
    source = stdin_source(pipe, RATE, 2)  # no resampling: the samples come out exactly
    pcm = stereo_tone(0, 1000, rate=RATE)
    data = pcm.tobytes()
    cuts = [0, 3, 8, 9, 16, 1001, len(data)]  # mid-sample and mid-frame
    pieces = []
    for start, end in itertools.pairwise(cuts):
        pipe.write(data[start:end])
        piece = source.read(5)
        assert piece is not None
        pieces.append(piece)
    pipe.close_writer()
    pieces += read_all(source)
    expected = pcm.astype(np.float32).mean(axis=1) / 32768
    np.testing.assert_allclose(np.concatenate(pieces), expected, rtol=1e-6)
