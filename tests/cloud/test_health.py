from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from cloud.core.config import Settings
from cloud.main import create_app


def test_health_reports_ok_and_version(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path / "data")))
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert (tmp_path / "data").is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_starts_a_real_server_using_the_data_dir(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "SOUNDWARDEN_DATA_DIR": str(tmp_path / "data")}
    exe = Path(sys.executable).parent / "soundwarden-cloud"
    server = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                assert time.monotonic() < deadline, "server did not answer within 30 s"
                time.sleep(0.2)
        assert response.json()["status"] == "ok"
        assert (tmp_path / "data").is_dir()
    finally:
        server.terminate()
        server.wait(timeout=10)
