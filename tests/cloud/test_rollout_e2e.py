"""The whole update loop with nothing simulated: a model trained by a real `soundwarden-cloud
serve` process from labelled clips, promoted, announced over a real Mosquitto, downloaded by a
real edge daemon with its device token, verified, shadowed, switched to, and reported; the
daemon's events then carry the new version and the rollout completes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
from fastapi import FastAPI

from cloud.core.config import Settings
from cloud.main import create_app
from cloud.splits import SPLITS
from models.audio import load_mono
from models.contract import EventPayload, ModelStatePayload, StatusPayload
from tests.bundles import SHIPPED_KEYS
from tests.cloud.conftest import PASSWORD, add_user, enrol
from tests.cloud.jobutil import seed_training_clips
from tests.cloud.server import cloud_server
from tests.conftest import CRY_FULL_BAND
from tests.edge.test_daemon import finish, room, start_daemon, write_config, write_wav
from tests.mosquitto import Mosquitto, Subscriber, wait_for

DEVICE = "nursery"


def _prepared_cloud(tmp_path: Path, broker: Mosquitto) -> tuple[dict[str, str], str]:
    """The cloud's database and data folder with an admin, the device and labelled clips in
    every split; returns the server environment and the device token."""
    database_url = f"sqlite:///{tmp_path / 'cloud.db'}"
    app: FastAPI = create_app(Settings(data_dir=tmp_path / "cloud", database_url=database_url))
    try:
        add_user(app, "admin", "admin")
        token = enrol(app, DEVICE)
        seed_training_clips(app, SPLITS)
    finally:
        app.state.engine.dispose()
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(tmp_path / "cloud"),
        "SOUNDWARDEN_DATABASE_URL": database_url,
        "SOUNDWARDEN_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
    }
    return env, token


def test_a_model_trained_in_the_cloud_reaches_the_device_and_its_events(
    tmp_path: Path, broker: Mosquitto
) -> None:
    env, token = _prepared_cloud(tmp_path, broker)
    subscriber = Subscriber(broker.port, topic="soundwarden/#")
    audio = write_wav(tmp_path / "cry.wav", room(2), load_mono(CRY_FULL_BAND), room(2, 1))
    with cloud_server(env, tmp_path / "serve.log") as url, httpx.Client(base_url=url) as http:
        login = http.post("/api/v1/auth/login", json={"username": "admin", "password": PASSWORD})
        assert login.status_code == 200, login.text
        http.headers["X-CSRF-Token"] = login.json()["csrf_token"]
        job = http.post("/api/v1/jobs/train", json={"epochs": 2}).json()

        def finished() -> bool:
            state = http.get(f"/api/v1/jobs/{job['id']}").json()
            assert state["state"] not in ("failed", "cancelled"), state
            return bool(state["state"] == "succeeded")

        wait_for(finished, timeout_s=600)
        version = http.get(f"/api/v1/jobs/{job['id']}").json()["result"]["model"]["version"]
        cloud_key = tmp_path / "cloud.pub"
        cloud_key.write_bytes(http.get("/api/v1/models/signing-key.pub").content)

        # The device trusts the release key and the cloud's. This test is about the loop, not
        # the two-epoch model's judgement: a low threshold makes both models raise events on
        # the cry, and shadowing accepts any agreement.
        config = write_config(
            tmp_path,
            broker.port,
            f'type = "file"\npath = "{audio}"\nloop = true',
            f'[model]\ntrusted_keys = ["{SHIPPED_KEYS}", "{cloud_key}"]\n'
            f'[clips]\ntoken = "{token}"\n'
            "[detection]\nthresholds = {cry = 0.05}\n"
            "[updates]\nshadow_s = 2\nprobation_s = 2\nmin_agreement = 0\nevent_slack = 1000\n",
        )
        daemon = start_daemon(config)
        try:
            wait_for(lambda: bool(subscriber.payloads(f"soundwarden/{DEVICE}/status")))
            promoted = http.post(
                f"/api/v1/models/cry-detector/{version}/promote",
                json={"devices": [DEVICE], "stages": ["100%"]},
            )
            assert promoted.status_code == 201, promoted.text
            rollout = promoted.json()["id"]

            def completed() -> bool:
                return bool(http.get(f"/api/v1/rollouts/{rollout}").json()["state"] == "completed")

            wait_for(completed, timeout_s=120)
            states = [
                ModelStatePayload.model_validate_json(p)
                for p in subscriber.payloads(f"soundwarden/{DEVICE}/model/state")
            ]
            assert states[-1].state == "installed" and states[-1].installed.version == version
            assert states[-1].rollout == str(rollout)
            assert "shadowing" in [s.state for s in states]

            def new_version_heard() -> bool:
                events = subscriber.payloads(f"soundwarden/{DEVICE}/events")
                heard = {EventPayload.model_validate_json(e).model.version for e in events}
                status = subscriber.payloads(f"soundwarden/{DEVICE}/status")
                running = StatusPayload.model_validate_json(status[-1]).model.version
                return version in heard and running == version

            wait_for(new_version_heard, timeout_s=60)
            device = http.get(f"/api/v1/devices/{DEVICE}").json()
            assert device["model_version"] == version
        finally:
            daemon.send_signal(signal.SIGTERM)
            finish(daemon)
            subscriber.close()
