from __future__ import annotations

import os
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from cloud.core.config import Settings
from cloud.main import create_app
from tests.cloud.server import cloud_server


def test_health_reports_ok_and_version(tmp_path: Path) -> None:
    client = TestClient(create_app(Settings(data_dir=tmp_path / "data")))
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert (tmp_path / "data").is_dir()


def test_serve_starts_a_real_server_using_the_data_dir(tmp_path: Path) -> None:
    env = {**os.environ, "SOUNDWARDEN_DATA_DIR": str(tmp_path / "data")}
    with cloud_server(env, tmp_path / "serve.log") as base:
        response = httpx.get(f"{base}/api/v1/health", timeout=5)
    assert response.json()["status"] == "ok"
    assert (tmp_path / "data").is_dir()
