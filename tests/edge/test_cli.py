from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pyaudio", reason="the mic extra (PyAudio) is part of the test install")

ALSA_FILE_DEVICE = """
pcm.soundwarden_test_mic {{
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile "{fifo}"
    format "raw"
}}
"""


@pytest.fixture()
def alsa_home(tmp_path: Path) -> Iterator[Path]:
    """A HOME whose .asoundrc defines a capture device fed from a FIFO (no sound card here).

    PortAudio opens every device while listing them, and opening a FIFO blocks until a writer
    appears, so a writer keeps feeding silence for the duration of the test.
    """
    fifo = tmp_path / "mic.fifo"
    os.mkfifo(fifo)
    (tmp_path / ".asoundrc").write_text(ALSA_FILE_DEVICE.format(fifo=fifo))
    writer = subprocess.Popen(
        ["sh", "-c", f"while :; do cat /dev/zero > '{fifo}'; done"],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield tmp_path
    finally:
        os.killpg(writer.pid, 9)
        writer.wait()


def test_devices_lists_the_alsa_capture_device(alsa_home: Path) -> None:
    exe = Path(sys.executable).parent / "soundwarden-edge"
    result = subprocess.run(
        [str(exe), "devices"],
        env={**os.environ, "HOME": str(alsa_home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["index", "channels", "rate_hz", "name"]
    assert any(line.split()[-1] == "soundwarden_test_mic" for line in lines[1:])


def test_detect_prints_events_as_json_lines(tmp_path: Path) -> None:
    from models.bundle import PRETRAINED_DIR
    from models.contract import EventPayload
    from tests.conftest import CRY_FULL_BAND, SPEECH

    exe = Path(sys.executable).parent / "soundwarden-edge"
    result = subprocess.run(
        [
            str(exe),
            "detect",
            "--bundle",
            str(PRETRAINED_DIR / "cry-detector"),
            "--device",
            "nursery",
            str(CRY_FULL_BAND),
            str(SPEECH),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    events = [EventPayload.model_validate_json(line) for line in result.stdout.splitlines()]
    assert events[0].type == "start" and events[-1].type == "end"
    assert {e.device for e in events} == {"nursery"}


def test_detect_refuses_an_unsigned_bundle(tmp_path: Path) -> None:
    import shutil

    from models.bundle import PRETRAINED_DIR
    from tests.conftest import CRY_FULL_BAND

    bundle = tmp_path / "cry-detector"
    shutil.copytree(PRETRAINED_DIR / "cry-detector", bundle)
    (bundle / "manifest.sig").unlink()
    exe = Path(sys.executable).parent / "soundwarden-edge"
    result = subprocess.run(
        [str(exe), "detect", "--bundle", str(bundle), str(CRY_FULL_BAND)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "unsigned bundle" in result.stderr and result.stdout == ""
