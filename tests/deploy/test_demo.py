"""`scripts/demo.py` (what `make demo` runs) end to end: a real cloud with its embedded broker,
a real edge daemon replaying shipped recordings; events reach the terminal, the printed login
opens the console, and both ways of stopping (--duration, Ctrl-C) leave no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import alsa
from tests.conftest import REPO
from tests.mosquitto import wait_for

pytestmark = pytest.mark.slow


class Demo:
    def __init__(self, out: Path, *options: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        command = [sys.executable, str(REPO / "scripts" / "demo.py"), "--port", "0"]
        self.process = subprocess.Popen(
            [*command, "--out", str(out), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.output)

    def wait(self, timeout_s: float = 120) -> int:
        code = self.process.wait(timeout_s)
        time.sleep(0.2)  # the reader thread takes the last lines
        return code

    def children_gone(self) -> None:
        pids = self.find(r"processes cloud pid (\d+), edge pid (\d+)")
        assert pids, self.output
        for pid in map(int, pids.groups()):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def events(demo: Demo, kind: str) -> list[str]:
    return [line for line in demo.lines if re.search(rf"\bdemo  cry +{kind} ", line)]


def test_the_demo_prints_events_and_stops_by_itself(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "run", "--duration", "25")
    assert demo.wait() == 0, demo.output
    assert events(demo, "start") and events(demo, "end"), demo.output
    assert "device demo is online" in demo.output and "device demo is offline" in demo.output
    assert demo.find(r"console   http://127\.0\.0\.1:\d+/  \(user admin, password \S{16}\)")
    assert demo.lines[-1].startswith("stopped (") and "events" in demo.lines[-1]
    demo.children_gone()


def test_ctrl_c_stops_everything_cleanly_and_the_printed_login_works(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "run", "--duration", "300")
    try:
        wait_for(lambda: demo.find(r"end .* clip (http://\S+)") is not None, timeout_s=120)
        login = demo.find(r"console   (http://\S+)/  \(user (\w+), password (\S+)\)")
        assert login, demo.output
        console, user, password = login.groups()
        clip = demo.find(r"end .* clip (http://\S+)")
        assert clip is not None
        with httpx.Client(base_url=console) as browser:
            signed = browser.post(
                "/api/v1/auth/login", json={"username": user, "password": password}
            )
            assert signed.status_code == 200, signed.text
            # The clip is uploaded just after its episode ends.
            wait_for(lambda: browser.get(clip.group(1)).status_code == 200, timeout_s=30)
        demo.process.send_signal(signal.SIGINT)
        assert demo.wait(60) == 0, demo.output
    finally:
        if demo.process.poll() is None:
            demo.process.kill()
    assert "stopping: edge daemon, then the cloud" in demo.output
    demo.children_gone()
    assert "Traceback" not in (tmp_path / "run" / "edge.log").read_text()
    assert "Traceback" not in (tmp_path / "run" / "cloud.log").read_text()


def test_the_mic_variant_captures_from_the_named_microphone(tmp_path: Path) -> None:
    """Through PyAudio from an ALSA capture device (FIFO-backed: these machines have no sound
    card), up to the daemon capturing; what the model makes of that audio is the daemon tests'
    business (tests/edge/test_daemon.py)."""
    pytest.importorskip("pyaudio", reason="the mic extra (PyAudio) is part of the test install")
    microphone = alsa.install(tmp_path, lambda start, count: np.zeros((count, 2), np.int16))
    # PortAudio finds the device in $HOME/.asoundrc.
    options = ("--mic", alsa.DEVICE_NAME, "--duration", "8")
    demo = Demo(tmp_path / "run", *options, env={"HOME": str(tmp_path)})
    try:
        assert demo.wait() == 0, demo.output
    finally:
        microphone.stop()
    assert "listening to the microphone" in demo.output
    assert "device demo is online" in demo.output
    log = (tmp_path / "run" / "edge.log").read_text()
    assert f"capturing audio from {alsa.DEVICE_NAME}" in log
    demo.children_gone()


def test_the_mic_variant_says_so_when_there_is_no_microphone(tmp_path: Path) -> None:
    pytest.importorskip("pyaudio", reason="the mic extra (PyAudio) is part of the test install")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--mic", "--out", str(tmp_path)],
        env={**os.environ, "HOME": str(tmp_path)},  # an ALSA with no card, and no .asoundrc
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "no microphone here: run without --mic" in done.stderr
