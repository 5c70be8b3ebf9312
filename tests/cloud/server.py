"""Real server processes for the cloud tests: `soundwarden-cloud serve` (and moto's S3 server),
started on a free loopback port and stopped afterwards."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.mosquitto import free_port, wait_for

SOUNDWARDEN_CLOUD = Path(sys.executable).parent / "soundwarden-cloud"


@contextmanager
def running(
    command: Sequence[str], *, env: dict[str, str], log: Path, probe: str, timeout_s: float = 30
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` (output to `log`), wait until `probe` answers over HTTP, and terminate
    it afterwards. A process that dies while starting fails the test with its log."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def answers() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(probe, timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_for(answers, timeout_s=timeout_s)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=20)


@contextmanager
def cloud_server(env: dict[str, str], log: Path, *options: str) -> Iterator[str]:
    """`soundwarden-cloud serve [options]` with `env`; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [str(SOUNDWARDEN_CLOUD), "serve", "--port", str(port), *options]
    with running(command, env=env, log=log, probe=f"{base}/api/v1/health"):
        yield base
