"""Staged rollouts against a real Mosquitto and the real app, over SQLite and PostgreSQL. Devices
are MQTT clients that take what arrives on their model/set topic and report model/state payloads
built with the contract's models, as the edge updater does."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi import FastAPI
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine

from cloud import registry
from cloud.cli import main as cloud_cli
from cloud.core.config import Settings
from cloud.core.db import Base, alembic_config
from cloud.tables import Device, ModelVersion
from models.bundle import update_manifest
from models.contract import (
    IN_PROGRESS,
    ModelRef,
    ModelSetPayload,
    ModelStatePayload,
    ModelTarget,
    UpdateState,
    model_set_topic,
    model_state_topic,
)
from tests.bundles import SHIPPED_VERSION
from tests.cloud.conftest import enrol, signed_in
from tests.conftest import write_test_bundle
from tests.mosquitto import Mosquitto, Subscriber, wait_for

NAME = "cry-detector"
SHIPPED = SHIPPED_VERSION  # registered on start
NEW = "2.0.0"
PROMOTE = f"/api/v1/models/{NAME}/{NEW}/promote"


@pytest.fixture
def settings(settings: Settings, broker: Mosquitto) -> Settings:
    return settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{broker.port}"})


@pytest.fixture
def app(app: FastAPI, tmp_path: Path) -> FastAPI:
    """With a cloud-signed cry-detector 2.0.0 in the registry next to the shipped one."""
    source = write_test_bundle(tmp_path)
    update_manifest(source, version=NEW)
    with app.state.sessions() as db:
        registry.register(db, app.state.settings, source, sign=True)
        db.commit()
    return app


class FakeDevice:
    """Keeps what arrives on its model/set topic; reports model/state like the edge updater."""

    def __init__(self, port: int, device_id: str, version: str) -> None:
        self.id = device_id
        self.version = version  # what it runs
        self._inbox = Subscriber(port, model_set_topic(device_id))
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def sets(self) -> list[bytes]:
        return self._inbox.payloads(model_set_topic(self.id))

    def last_set(self) -> ModelSetPayload:
        return ModelSetPayload.model_validate_json(self.sets()[-1])

    def report(
        self,
        state: UpdateState,
        target: ModelSetPayload | None = None,
        *,
        progress: float | None = None,
        error: str | None = None,
    ) -> None:
        payload = ModelStatePayload(
            device=self.id,
            at=datetime.now(UTC),
            state=state,
            installed=ModelRef(name=NAME, version=self.version),
            previous=None,
            target=ModelTarget(name=target.name, version=target.version, sha256=target.sha256)
            if target
            else None,
            rollout=target.rollout if target else None,
            progress=progress,
            error=error,
            shadow=None,
            installed_version=self.version,
            latest_version=self.version,
            title=NAME,
            in_progress=state in IN_PROGRESS,
            update_percentage=None if progress is None else 100 * progress,
            release_summary=error,
        )
        self._client.publish(
            model_state_topic(self.id), payload.model_dump_json(), qos=1, retain=True
        ).wait_for_publish(10)

    def close(self) -> None:
        self._inbox.close()
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def fleet(app: FastAPI, port: int, **versions: str) -> Iterator[dict[str, FakeDevice]]:
    """Enrolled devices running `versions` ({device: version}), each reporting it (retained)."""
    devices = {}
    for device_id, version in versions.items():
        enrol(app, device_id)
        devices[device_id] = FakeDevice(port, device_id, version)
        devices[device_id].report("idle")
    try:
        yield devices
    finally:
        for device in devices.values():
            device.close()


def _known(client: TestClient, devices: dict[str, FakeDevice]) -> None:
    """Wait until the bridge has stored what each device runs."""

    def stored() -> bool:
        runs = {d["id"]: d["model_version"] for d in _get(client, "/api/v1/devices")}
        return all(runs.get(d.id) == d.version for d in devices.values())

    wait_for(stored)


def _get(client: TestClient, url: str) -> Any:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


def _rollout(client: TestClient, rollout_id: int) -> Any:
    return _get(client, f"/api/v1/rollouts/{rollout_id}")


def _members(client: TestClient, rollout_id: int) -> dict[str, Any]:
    return {m["device_id"]: m for m in _rollout(client, rollout_id)["members"]}


def _wait_member(client: TestClient, rollout_id: int, device: str, **fields: Any) -> None:
    wait_for(lambda: fields.items() <= _members(client, rollout_id)[device].items())


def _promote(client: TestClient, body: dict[str, Any] | None = None) -> Any:
    response = client.post(PROMOTE, json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _registered(app: FastAPI, version: str) -> ModelVersion:
    with app.state.sessions() as db:
        return registry.get(db, NAME, version)


def test_the_second_stage_waits_for_the_canary(
    app: FastAPI, admin: TestClient, broker: Mosquitto
) -> None:
    with fleet(app, broker.port, a=SHIPPED, b=SHIPPED, c=SHIPPED, d=SHIPPED) as devices:
        _known(admin, devices)
        # The default stages: 1 canary; 10% of 4, one device, which the canary already is;
        # then all.
        rollout = _promote(admin)
        assert (rollout["state"], rollout["stages"], rollout["stage"]) == (
            "running",
            ["1", "10%", "100%"],
            0,
        )
        stages = {m["device_id"]: (m["stage"], m["state"]) for m in rollout["members"]}
        assert stages == {
            "a": (0, "notified"),
            "b": (2, "waiting"),
            "c": (2, "waiting"),
            "d": (2, "waiting"),
        }
        assert admin.get(f"/api/v1/models/{NAME}/{NEW}").json()["current"]

        canary = devices["a"]
        wait_for(lambda: canary.sets() != [])
        message = canary.last_set()
        row = _registered(app, NEW)
        assert (message.name, message.version, message.rollout) == (NAME, NEW, str(rollout["id"]))
        assert message.sha256 == row.sha256 == rollout["sha256"]
        expected_url = f"http://testserver/api/v1/models/{NAME}/{NEW}/bundle.tar.gz"
        assert message.url == rollout["url"] == expected_url  # the request's base URL
        token = enrol(app, "downloader")
        bundle = admin.get(message.url, headers={"Authorization": f"Bearer {token}"})
        assert bundle.status_code == 200 and len(bundle.content) == message.size
        _wait_member(admin, rollout["id"], "a", pending=False)
        assert _members(admin, rollout["id"])["a"]["notified_at"] is not None

        canary.report("downloading", message, progress=0.5)
        _wait_member(admin, rollout["id"], "a", update_state="downloading", progress=0.5)
        canary.version = NEW
        canary.report("probation", message, progress=0.1)
        _wait_member(admin, rollout["id"], "a", update_state="probation")
        assert all(devices[d].sets() == [] for d in "bcd")
        later = _members(admin, rollout["id"])
        assert all(later[d]["state"] == "waiting" and not later[d]["pending"] for d in "bcd")

        canary.report("installed", message)
        wait_for(lambda: all(devices[d].sets() != [] for d in "bcd"))
        assert _rollout(admin, rollout["id"])["stage"] == 2
        for d in "bcd":
            devices[d].version = NEW
            devices[d].report("installed", devices[d].last_set())
        wait_for(lambda: _rollout(admin, rollout["id"])["state"] == "completed")
        done = _rollout(admin, rollout["id"])
        assert done["devices"] == {"healthy": 4} and done["finished_at"] is not None

    # What the broker keeps for a device that connects later: the retained model/set.
    late = Subscriber(broker.port, "soundwarden/+/model/set")
    wait_for(lambda: len(late.messages) == 4)
    assert all(
        retained and ModelSetPayload.model_validate_json(p).version == NEW
        for _, p, retained in late.messages
    )
    late.close()


def test_a_rejection_pauses_the_rollout_and_resuming_goes_on_without_it(
    app: FastAPI, admin: TestClient, broker: Mosquitto
) -> None:
    with fleet(app, broker.port, a=SHIPPED, b=SHIPPED, c=SHIPPED) as devices:
        _known(admin, devices)
        rollout = _promote(admin, {"stages": ["1", "100%"]})
        wait_for(lambda: devices["a"].sets() != [])
        reason = "sha256 0123 differs from the announced one"
        devices["a"].report("rejected", devices["a"].last_set(), error=reason)
        wait_for(lambda: _rollout(admin, rollout["id"])["state"] == "paused")
        paused = _rollout(admin, rollout["id"])
        assert paused["reason"] == f"a rejected {NAME} {NEW}: {reason}"
        members = {m["device_id"]: m for m in paused["members"]}
        assert (members["a"]["state"], members["a"]["error"]) == ("failed", reason)
        assert members["b"]["state"] == members["c"]["state"] == "waiting"

        again = admin.post(PROMOTE)
        assert again.status_code == 409 and "abort it first" in again.json()["detail"]
        assert admin.post(f"/api/v1/rollouts/{rollout['id']}/pause").status_code == 409

        resumed = admin.post(f"/api/v1/rollouts/{rollout['id']}/resume")
        assert resumed.status_code == 200 and resumed.json()["state"] == "running"
        wait_for(lambda: devices["b"].sets() != [] and devices["c"].sets() != [])
        assert admin.post(f"/api/v1/rollouts/{rollout['id']}/resume").status_code == 409
        for d in "bc":
            devices[d].version = NEW
            devices[d].report("installed", devices[d].last_set())
        wait_for(lambda: _rollout(admin, rollout["id"])["state"] == "completed")
        assert _rollout(admin, rollout["id"])["devices"] == {"failed": 1, "healthy": 2}


def test_an_admin_pauses_and_a_rollback_after_the_switch_also_pauses(
    app: FastAPI, admin: TestClient, broker: Mosquitto
) -> None:
    with fleet(app, broker.port, a=SHIPPED, b=SHIPPED) as devices:
        _known(admin, devices)
        rollout = _promote(admin, {"devices": ["b", "a"], "stages": ["1", "100%"]})
        wait_for(lambda: devices["b"].sets() != [])  # the list's order: b is the canary
        paused = admin.post(f"/api/v1/rollouts/{rollout['id']}/pause").json()
        assert (paused["state"], paused["reason"]) == ("paused", "paused by ada")
        devices["b"].version = NEW
        devices["b"].report("installed", devices["b"].last_set())
        _wait_member(admin, rollout["id"], "b", state="healthy")
        assert devices["a"].sets() == []  # paused: no next stage
        admin.post(f"/api/v1/rollouts/{rollout['id']}/resume")
        wait_for(lambda: devices["a"].sets() != [])
        devices["a"].version = SHIPPED  # switched, then put back after its probation failed
        devices["a"].report("rolled_back", devices["a"].last_set(), error="37 episodes in 5 min")
        wait_for(lambda: _rollout(admin, rollout["id"])["state"] == "paused")
        assert _rollout(admin, rollout["id"])["reason"] == (
            f"a rolled back {NAME} {NEW}: 37 episodes in 5 min"
        )


def test_abort_sends_notified_devices_back_and_leaves_the_others(
    app: FastAPI, admin: TestClient, broker: Mosquitto
) -> None:
    # b runs a version the registry lacks: it cannot be sent back, only have its update cleared.
    with fleet(app, broker.port, a=SHIPPED, b="0.9.0", c=SHIPPED) as devices:
        _known(admin, devices)
        rollout = _promote(admin, {"stages": ["2", "100%"]})
        wait_for(lambda: devices["a"].sets() != [] and devices["b"].sets() != [])
        devices["a"].version = NEW  # switched, on probation
        devices["a"].report("probation", devices["a"].last_set(), progress=0.2)
        devices["b"].report("downloading", devices["b"].last_set(), progress=0.4)
        _wait_member(admin, rollout["id"], "b", update_state="downloading")
        assert {m["previous_version"] for m in _rollout(admin, rollout["id"])["members"]} == {
            SHIPPED,
            "0.9.0",
            None,  # c: never notified
        }

        aborted = admin.post(f"/api/v1/rollouts/{rollout['id']}/abort")
        assert aborted.status_code == 200, aborted.text
        assert (aborted.json()["state"], aborted.json()["reason"]) == ("aborted", "aborted by ada")
        wait_for(lambda: len(devices["a"].sets()) == 2 and len(devices["b"].sets()) == 2)
        back = devices["a"].last_set()
        old = _registered(app, SHIPPED)
        assert (back.version, back.sha256, back.rollout) == (
            SHIPPED,
            old.sha256,
            str(rollout["id"]),
        )
        assert back.url.endswith(f"/models/{NAME}/{SHIPPED}/bundle.tar.gz")
        assert devices["b"].sets()[-1] == b""
        assert devices["c"].sets() == []
        assert admin.post(f"/api/v1/rollouts/{rollout['id']}/abort").status_code == 409
        assert admin.post(f"/api/v1/rollouts/{rollout['id']}/resume").status_code == 409

        # A device going back reports on the aborted rollout; nothing moves any more.
        devices["a"].version = SHIPPED
        devices["a"].report("installed", back)
        _wait_member(admin, rollout["id"], "a", update_state="installed", state="notified")

    late = Subscriber(broker.port, "soundwarden/+/model/set")
    wait_for(lambda: len(late.messages) >= 1)
    assert [(topic, retained) for topic, _, retained in late.messages] == [
        (model_set_topic("a"), True)
    ]
    late.close()
    assert _promote(admin)["state"] == "running"  # the model is free to roll out again


def test_notifications_wait_for_the_bridge(app: FastAPI, broker: Mosquitto) -> None:
    client = signed_in(app, "ada", "admin")  # outside `with`: the app, its bridge included, is down
    with fleet(app, broker.port, a=SHIPPED) as devices:
        first = _promote(client, {"stages": ["100%"]})
        assert _members(client, first["id"])["a"]["pending"]
        # Aborted before the bridge told anyone: nothing to undo, nothing sent.
        client.post(f"/api/v1/rollouts/{first['id']}/abort")
        second = _promote(client, {"stages": ["100%"]})
        with client:  # the bridge starts
            _wait_member(client, second["id"], "a", pending=False)
            assert _members(client, first["id"])["a"]["pending"] is False
            wait_for(lambda: devices["a"].sets() != [])
            assert devices["a"].last_set().rollout == str(second["id"])
        assert len(devices["a"].sets()) == 1
        assert _members(client, first["id"])["a"]["notified_at"] is None


def test_what_promote_refuses(app: FastAPI, admin: TestClient) -> None:
    for device in ("a", "b", "gone", "other"):
        enrol(app, device)
    admin.post("/api/v1/devices/gone/revoke")
    with app.state.sessions() as db:
        other = db.get(Device, "other")
        assert other is not None
        other.model_name = "machine-anomaly"  # as its status heartbeat says
        db.commit()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"stages": []}, 422, "at least 1"),
        ({"stages": ["0"]}, 422, "pattern"),
        ({"stages": ["150%"]}, 422, "pattern"),
        ({"group": "g", "devices": ["a"]}, 422, "not both"),
        ({"group": "no group"}, 422, "pattern"),
        ({"extra": 1}, 422, "Extra inputs"),
        ({"devices": ["a", "ghost", "gone"]}, 400, "not enrolled, or revoked: ghost, gone"),
        ({"devices": ["a", "a"]}, 400, "more than once"),
        ({"devices": ["a", "other"]}, 400, f"running another model than {NAME}: other"),
        ({"group": "attic"}, 400, "no enrolled device of group 'attic'"),
        ({"stages": ["1"]}, 400, "reach 1 of the 2 devices"),  # a and b: the fleet for it
    ]
    for body, code, why in cases:
        response = admin.post(PROMOTE, json=body)
        assert response.status_code == code, (body, response.text)
        assert why in response.text, (body, response.text)
    assert admin.post(f"/api/v1/models/{NAME}/9.9.9/promote").status_code == 404
    assert admin.get("/api/v1/rollouts").json() == []

    app.state.settings = app.state.settings.model_copy(update={"mqtt_url": None})
    no_broker = admin.post(PROMOTE)
    assert no_broker.status_code == 409 and "no MQTT broker" in no_broker.json()["detail"]


def test_who_may_do_what(app: FastAPI, admin: TestClient, labeller: TestClient) -> None:
    enrol(app, "a")
    rollout = _promote(admin, {"stages": ["100%"]})
    url = f"/api/v1/rollouts/{rollout['id']}"
    assert labeller.post(PROMOTE).status_code == 403
    for action in ("pause", "resume", "abort"):
        assert labeller.post(f"{url}/{action}").status_code == 403
    assert [r["id"] for r in _get(labeller, "/api/v1/rollouts")] == [rollout["id"]]
    assert _get(labeller, url)["members"][0]["device_id"] == "a"
    anonymous = TestClient(app)
    for path in ("/api/v1/rollouts", url):
        assert anonymous.get(path).status_code == 401
    assert anonymous.post(PROMOTE).status_code == 401
    assert anonymous.post(f"{url}/abort").status_code == 401
    assert admin.get("/api/v1/rollouts/999").status_code == 404
    assert admin.post("/api/v1/rollouts/999/pause").status_code == 404
    assert admin.get(f"/api/v1/rollouts/{2**40}").status_code == 422


def test_device_groups(
    app: FastAPI,
    admin: TestClient,
    labeller: TestClient,
    broker: Mosquitto,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SOUNDWARDEN_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SOUNDWARDEN_DATABASE_URL", settings.db_url)
    assert cloud_cli(["add-device", "attic-1", "--group", "attic"]) == 0
    assert cloud_cli(["add-device", "attic-2", "--group", "no group"]) == 1
    assert "group 'no group'" in capsys.readouterr().err
    assert cloud_cli(["devices"]) == 0
    assert "attic-1\tactive\tattic\t" in capsys.readouterr().out

    made = admin.post("/api/v1/devices", json={"id": "attic-3", "group": "attic"})
    assert made.status_code == 201, made.text
    enrol(app, "kitchen")
    assert labeller.patch("/api/v1/devices/kitchen", json={"group": "attic"}).status_code == 403
    assert admin.patch("/api/v1/devices/kitchen", json={}).status_code == 422
    assert admin.patch("/api/v1/devices/kitchen", json={"group": "a b"}).status_code == 422
    assert admin.patch("/api/v1/devices/ghost", json={"group": "attic"}).status_code == 404
    moved = admin.patch("/api/v1/devices/kitchen", json={"group": "downstairs"})
    assert moved.status_code == 200 and moved.json()["group"] == "downstairs"
    groups = {d["id"]: d["group"] for d in _get(labeller, "/api/v1/devices")}
    assert groups == {"attic-1": "attic", "attic-3": "attic", "kitchen": "downstairs"}

    rollout = _promote(admin, {"group": "attic"})
    assert rollout["group"] == "attic"
    assert {m["device_id"] for m in rollout["members"]} == {"attic-1", "attic-3"}
    cleared = admin.patch("/api/v1/devices/kitchen", json={"group": None})
    assert cleared.json()["group"] is None


def test_a_bundle_download_resumes_with_a_range(app: FastAPI) -> None:
    token = enrol(app, "a")
    url = f"/api/v1/models/{NAME}/{NEW}/bundle.tar.gz"
    auth = {"Authorization": f"Bearer {token}"}
    device = TestClient(app)
    whole = device.get(url, headers=auth)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)
    rest = device.get(url, headers={**auth, "Range": "bytes=100-"})
    assert rest.status_code == 206
    assert rest.content == whole.content[100:]
    assert rest.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    past = device.get(url, headers={**auth, "Range": f"bytes={size}-"})
    assert past.status_code == 416
    assert device.get(url, headers={"Range": "bytes=100-"}).status_code == 401


def test_migrations_make_the_tables_and_go_back(settings: Settings) -> None:
    config = alembic_config(settings.db_url)
    command.upgrade(config, "head")
    command.downgrade(config, "0001")
    command.upgrade(config, "head")
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_console_pages_show_rollouts_and_offer_the_controls(
    app: FastAPI, admin: TestClient, labeller: TestClient, broker: Mosquitto
) -> None:
    enrol(app, "a")
    admin.patch("/api/v1/devices/a", json={"group": "attic"})
    models = admin.get("/models")
    assert models.status_code == 200
    assert 'id="roll-out"' in models.text and '<option value="cry-detector/2.0.0">' in models.text
    assert "<option>attic</option>" in models.text and 'value="1, 10%, 100%"' in models.text
    assert 'href="/models"' in models.text  # in the navigation
    assert 'id="roll-out"' not in labeller.get("/models").text

    rollout = _promote(admin, {"stages": ["100%"]})
    page = admin.get(f"/rollouts/{rollout['id']}")
    assert page.status_code == 200
    assert '<tr data-device="a">' in page.text and "notified" in page.text
    assert 'data-action="pause"' in page.text and 'data-action="abort"' in page.text
    assert 'data-action="resume"' not in page.text
    assert "data-action" not in labeller.get(f"/rollouts/{rollout['id']}").text
    listed = admin.get("/rollouts").text
    assert f'href="/rollouts/{rollout["id"]}"' in listed and "cry-detector 2.0.0" in listed
    assert f'href="/rollouts/{rollout["id"]}"' in admin.get("/models").text

    admin.post(f"/api/v1/rollouts/{rollout['id']}/abort")
    ended = admin.get(f"/rollouts/{rollout['id']}").text
    assert "aborted by ada" in ended and "data-action" not in ended
    assert admin.get("/rollouts/999").status_code == 404
    assert TestClient(app, follow_redirects=False).get("/rollouts").status_code == 303


def test_bundle_urls_start_with_the_public_url(app: FastAPI, admin: TestClient) -> None:
    enrol(app, "a")
    public = "https://cloud.example.org/soundwarden/"
    app.state.settings = app.state.settings.model_copy(update={"public_url": public})
    rollout = _promote(admin)
    assert rollout["url"] == f"{public}api/v1/models/{NAME}/{NEW}/bundle.tar.gz"
    with pytest.raises(ValueError, match="public_url"):
        Settings(public_url="cloud.example.org")
