"""The MQTT bridge against a real Mosquitto, over SQLite and PostgreSQL: what devices publish
shows up in the devices API, nothing is lost while the cloud is down, nothing is stored twice,
and bad messages are counted and skipped. Also the service's operations side: request metrics,
readiness, JSON logs and a graceful stop."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text
from sqlalchemy.orm import Session as Db

from cloud import accounts
from cloud.bridge import ElectedBridge, bridge_lock
from cloud.core.config import Settings
from cloud.core.db import make_engine
from cloud.main import create_app
from cloud.tables import Device, Event
from edge.config import MqttConfig
from edge.mqtt import MqttLink
from edge.spool import Spool
from models.contract import (
    EventPayload,
    ModelRef,
    SourceStatus,
    SpoolStatus,
    StatusPayload,
    WindowCounts,
    availability_topic,
    events_topic,
    model_state_topic,
    status_topic,
)
from tests.cloud.conftest import enrol, signed_in
from tests.cloud.server import SOUNDWARDEN_CLOUD, running
from tests.mosquitto import Mosquitto, free_port, tls_files, wait_for

Publish = Callable[..., None]
T0 = datetime(2025, 3, 1, 2, 30, tzinfo=UTC)
MODEL = ModelRef(name="cry-detector", version="1.2.0")


def _event(
    device: str, episode: str, kind: str = "start", score: float = 0.9, label: str = "cry"
) -> str:
    return EventPayload.model_validate(
        {
            "id": episode,
            "type": kind,
            "label": label,
            "score": score,
            "max_score": score,
            "started_at": T0,
            "ended_at": T0 + timedelta(seconds=7) if kind == "end" else None,
            "level_dbfs": -31.5,
            "model": MODEL,
            "device": device,
        }
    ).model_dump_json()


def _status(device: str, spool_depth: int) -> str:
    return StatusPayload(
        device=device,
        at=T0,
        uptime_s=3600.0,
        model=MODEL,
        source=SourceStatus(type="microphone", name="default", state="running", level_dbfs=-48.0),
        windows=WindowCounts(processed=3600, dropped=0),
        spool=SpoolStatus(depth=spool_depth, dropped=0),
        clips=None,
        cpu_percent=7.5,
        rss_mb=81.0,
    ).model_dump_json()


def _metric(client: TestClient | httpx.Client, name: str, **labels: str) -> float:
    """The sum of `name`'s samples carrying `labels`, as /metrics reports them."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def _mqtt_messages(client: TestClient | httpx.Client, **labels: str) -> float:
    return _metric(client, "soundwarden_mqtt_messages_total", **labels)


@pytest.fixture
def settings(settings: Settings, broker: Mosquitto) -> Settings:
    return settings.model_copy(update={"mqtt_url": f"mqtt://127.0.0.1:{broker.port}"})


@contextmanager
def _publisher(port: int) -> Iterator[Publish]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_for(client.is_connected)

    def publish(topic: str, payload: str | bytes, retain: bool = False) -> None:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    yield publish
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def publish(broker: Mosquitto) -> Iterator[Publish]:
    with _publisher(broker.port) as publish:
        yield publish


def _online(client: TestClient, publish: Publish, device: str) -> None:
    """Announce `device` and wait until the bridge has recorded it: the bridge is subscribed,
    so events published from now on reach it."""
    publish(availability_topic(device), "online", retain=True)
    wait_for(lambda: client.get(f"/api/v1/devices/{device}").json()["online"] is True)


def _lose_database(app: FastAPI) -> None:
    """Point the app's sessions, the bridge's included, at a PostgreSQL that is not there."""
    dead = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/soundwarden")
    app.state.sessions.configure(bind=dead)


def _events(client: TestClient, **filters: str) -> list[dict[str, object]]:
    response = client.get("/api/v1/events", params={"limit": 500, **filters})
    assert response.status_code == 200, response.text
    events: list[dict[str, object]] = response.json()
    return events


def test_what_a_device_publishes_shows_in_the_devices_api(
    app: FastAPI, admin: TestClient, broker: Mosquitto, tmp_path: Path
) -> None:
    enrol(app, "nursery")
    spool = Spool(tmp_path / "outbox.db")
    link = MqttLink(spool, device="nursery", config=MqttConfig(host="127.0.0.1", port=broker.port))
    link.start()
    try:
        wait_for(lambda: admin.get("/api/v1/devices/nursery").json()["online"] is True)
        link.publish_retained(status_topic("nursery"), _status("nursery", spool_depth=3))
        spool.put("ep1:start", "event", _event("nursery", "ep1", "start", 0.91).encode())
        spool.put("ep1:end", "event", _event("nursery", "ep1", "end", 0.42).encode())
        link.notify()
        wait_for(lambda: len(admin.get("/api/v1/devices/nursery/events").json()) == 2)
        wait_for(lambda: admin.get("/api/v1/devices/nursery").json()["spool_depth"] == 3)
    finally:
        link.stop()
    wait_for(lambda: admin.get("/api/v1/devices/nursery").json()["online"] is False)

    device = admin.get("/api/v1/devices/nursery").json()
    assert device["model_name"] == "cry-detector"
    assert device["model_version"] == "1.2.0"
    assert device["status"]["windows"]["processed"] == 3600
    assert device["last_event_label"] == "cry"
    assert datetime.fromisoformat(device["last_event_at"]) == T0 + timedelta(seconds=7)
    page = admin.get("/api/v1/devices/nursery/events").json()
    assert [(e["episode_id"], e["type"], e["score"]) for e in page] == [
        ("ep1", "end", 0.42),  # newest first
        ("ep1", "start", 0.91),
    ]
    assert page[0]["payload"]["level_dbfs"] == -31.5
    second_page = admin.get("/api/v1/devices/nursery/events", params={"limit": 1, "offset": 1})
    assert [e["type"] for e in second_page.json()] == ["start"]
    assert admin.get("/api/v1/devices/ghost/events").status_code == 404


def test_a_redelivered_event_is_stored_once(
    app: FastAPI, admin: TestClient, publish: Publish
) -> None:
    enrol(app, "nursery")
    _online(admin, publish, "nursery")
    duplicates = _mqtt_messages(admin, kind="events", result="duplicate")
    first_update = _event("nursery", "ep1", "update", 0.8)
    for payload in (_event("nursery", "ep1"), first_update, first_update):
        publish(events_topic("nursery"), payload)
    # Same episode and step, another score: a later update, not a duplicate.
    publish(events_topic("nursery"), _event("nursery", "ep1", "update", 0.85))
    wait_for(lambda: len(_events(admin)) == 3)

    steps = [(e["type"], e["score"]) for e in _events(admin, device="nursery")]
    assert sorted(steps) == [("start", 0.9), ("update", 0.8), ("update", 0.85)]
    assert _mqtt_messages(admin, kind="events", result="duplicate") == duplicates + 1


def test_bad_messages_are_counted_and_skipped_and_strangers_recorded(
    app: FastAPI, admin: TestClient, publish: Publish, caplog: pytest.LogCaptureFixture
) -> None:
    enrol(app, "nursery")
    _online(admin, publish, "nursery")
    malformed = _mqtt_messages(admin, result="malformed")
    unknown = _mqtt_messages(admin, result="unknown_device")
    caplog.set_level(logging.WARNING, logger="cloud.bridge")

    publish(events_topic("nursery"), b"\xff not json")
    publish(events_topic("nursery"), '{"id": "ep1", "type": "start"}')  # schema violation
    publish(events_topic("nursery"), _event("kitchen", "ep2"))  # another device's name
    naive = {**json.loads(_status("nursery", 1)), "at": "2025-03-01T02:30:00"}
    publish(status_topic("nursery"), json.dumps(naive))  # a time without its UTC offset
    publish(availability_topic("nursery"), "maybe")
    publish(model_state_topic("nursery"), '{"device": "nursery", "state": "installed"}')
    publish(events_topic("stranger"), _event("stranger", "ep3"))
    publish(events_topic("stranger"), _event("stranger", "ep3", "end"))
    publish(events_topic("nursery"), _event("nursery", "ep4"))

    wait_for(lambda: len(_events(admin, device="nursery")) == 1)
    assert _mqtt_messages(admin, result="malformed") == malformed + 6
    assert _mqtt_messages(admin, result="unknown_device") == unknown + 2
    assert [e["type"] for e in _events(admin, device="stranger")] == ["end", "start"]
    recent = _events(admin, label="cry", since=(T0 + timedelta(seconds=1)).isoformat())
    assert [(e["device_id"], e["type"]) for e in recent] == [("stranger", "end")]
    assert admin.get("/api/v1/devices/nursery").json()["status"] is None

    bad_topics = [r.topic for r in caplog.records if r.getMessage().startswith("malformed")]
    assert bad_topics.count("soundwarden/nursery/events") == 3
    assert {
        "soundwarden/nursery/status",
        "soundwarden/nursery/availability",
        "soundwarden/nursery/model/state",
    } <= set(bad_topics)
    assert _mqtt_messages(admin, kind="model/state", result="malformed") >= 1
    strangers = [r for r in caplog.records if "not enrolled" in r.getMessage()]
    assert len(strangers) == 1  # once per device, not per message


def test_events_published_while_the_cloud_is_down_arrive_once_it_is_back(
    app: FastAPI, publish: Publish
) -> None:
    enrol(app, "nursery")
    client = signed_in(app, "ada", "admin")
    with client:
        _online(client, publish, "nursery")
        for i in range(100):
            publish(events_topic("nursery"), _event("nursery", f"before{i}"))
    # Stopped, possibly mid-burst: what was not stored was not acknowledged either.
    for i in range(5):
        publish(events_topic("nursery"), _event("nursery", f"while-down{i}"))
    assert not any(str(e["episode_id"]).startswith("while-down") for e in _events(client))
    with client:
        publish(events_topic("nursery"), _event("nursery", "after"))
        wait_for(lambda: any(e["episode_id"] == "after" for e in _events(client)))
        episodes = [e["episode_id"] for e in _events(client)]
    assert sorted(episodes) == sorted(
        [f"before{i}" for i in range(100)] + [f"while-down{i}" for i in range(5)] + ["after"]
    )


def test_events_wait_for_a_database_outage_to_end(
    app: FastAPI, admin: TestClient, publish: Publish, caplog: pytest.LogCaptureFixture
) -> None:
    enrol(app, "nursery")
    _online(admin, publish, "nursery")
    _lose_database(app)
    publish(events_topic("nursery"), _event("nursery", "during-outage"))
    wait_for(lambda: "database unavailable" in caplog.text)

    app.state.sessions.configure(bind=app.state.engine)  # it is back
    publish(events_topic("nursery"), _event("nursery", "after-outage"))
    wait_for(lambda: len(_events(admin)) == 2)
    assert {e["episode_id"] for e in _events(admin)} == {"during-outage", "after-outage"}


def test_metrics_count_requests_by_route_and_bridge_messages(
    app: FastAPI, admin: TestClient, publish: Publish
) -> None:
    enrol(app, "nursery")
    _online(admin, publish, "nursery")
    route = "/api/v1/devices/{device_id}"
    before = _metric(admin, "soundwarden_http_requests_total", route=route, status="200")
    admin.get("/api/v1/devices/nursery")
    admin.get("/api/v1/devices/nursery")
    assert admin.get("/no/such/page").status_code == 404

    text = admin.get("/metrics").text
    assert "/api/v1/devices/nursery" not in text  # route templates, never raw paths
    assert _metric(admin, "soundwarden_http_requests_total", route=route, status="200") == (
        before + 2
    )
    assert _metric(admin, "soundwarden_http_requests_total", route="unmatched", status="404") >= 1
    assert _metric(admin, "soundwarden_http_request_seconds_count", route=route) >= 2
    assert _mqtt_messages(admin, kind="availability", result="ok") >= 1


def test_healthz_fails_when_the_database_is_gone(app: FastAPI, admin: TestClient) -> None:
    assert admin.get("/healthz").status_code == 200
    _lose_database(app)
    response = admin.get("/healthz")
    assert response.status_code == 503
    assert "database" in response.json()["detail"]


def test_the_embedded_demo_broker_carries_events(tmp_path: Path) -> None:
    port = free_port()
    app = create_app(Settings(data_dir=tmp_path / "data", embedded_broker_port=port))
    enrol(app, "nursery")
    with signed_in(app, "ada", "admin") as client, _publisher(port) as publish:
        _online(client, publish, "nursery")
        publish(events_topic("nursery"), _event("nursery", "ep1"))
        wait_for(lambda: len(_events(client)) == 1)
        assert client.get("/api/v1/devices/nursery").json()["last_event_label"] == "cry"
    app.state.engine.dispose()


def test_a_tls_broker_with_a_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, cert, key = tls_files(tmp_path)
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "cloud", "s3 cret"], check=True)
    secure = Mosquitto(
        tmp_path,
        anonymous=False,
        listener=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}",
        extra=f"password_file {passwords}",
    )
    secure.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the bridge trusts the system's CAs
    url = f"mqtts://cloud:s3%20cret@127.0.0.1:{secure.port}"
    app = create_app(Settings(data_dir=tmp_path / "data", mqtt_url=url))
    enrol(app, "nursery")
    spool = Spool(tmp_path / "outbox.db")
    device = MqttConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": secure.port,
            "username": "cloud",
            "password": "s3 cret",
            "tls": {"ca_file": str(ca)},
        }
    )
    link = MqttLink(spool, device="nursery", config=device)
    try:
        with signed_in(app, "ada", "admin") as client:
            link.start()
            wait_for(lambda: client.get("/api/v1/devices/nursery").json()["online"] is True)
    finally:
        link.stop()
        secure.stop()
        app.state.engine.dispose()


def test_serve_logs_json_and_stops_the_bridge_cleanly_on_sigterm(
    tmp_path: Path, broker: Mosquitto, publish: Publish
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(tmp_path / "data"),
        "SOUNDWARDEN_MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
    }
    log_file = tmp_path / "serve.log"
    command = [str(SOUNDWARDEN_CLOUD), "serve", "--port", str(port), "--log-format", "json"]
    base = f"http://127.0.0.1:{port}"
    with running(command, env=env, log=log_file, probe=f"{base}/healthz") as server:
        http = httpx.Client(base_url=base, timeout=2)
        # Retained, so it reaches the bridge even if it subscribes after this.
        publish(availability_topic("nursery"), "maybe", retain=True)
        wait_for(lambda: _mqtt_messages(http, result="malformed") >= 1)
    # `running` stops it with SIGTERM: uvicorn shuts down gracefully, then dies of the signal
    # it caught, as systemd expects.
    assert server.returncode == -signal.SIGTERM

    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    malformed = next(e for e in entries if e["message"].startswith("malformed"))
    assert (malformed["level"], malformed["logger"]) == ("WARNING", "cloud.bridge")
    assert malformed["topic"] == "soundwarden/nursery/availability"
    assert any(e["logger"] == "uvicorn.access" for e in entries)
    messages = [e["message"] for e in entries]
    assert messages.index("MQTT bridge stopped") < messages.index("Application shutdown complete.")


# One bridge among the processes serving a database: the leadership lock (cloud/leadership.py).

# A process that takes the bridge's lock, says so, and waits to be killed.
HOLD_THE_LOCK = """
import time
from cloud.bridge import bridge_lock
from cloud.core.config import Settings
assert bridge_lock(Settings()).acquire()
print("holding", flush=True)
time.sleep(300)
"""


def _settings_env(settings: Settings) -> dict[str, str]:
    env = {**os.environ, "SOUNDWARDEN_DATA_DIR": str(settings.data_dir)}
    env["SOUNDWARDEN_DATABASE_URL"] = settings.db_url
    if settings.mqtt_url:
        env["SOUNDWARDEN_MQTT_URL"] = settings.mqtt_url
    return env


def test_only_one_process_holds_the_bridge_lock_until_it_dies(settings: Settings) -> None:
    first, second = bridge_lock(settings), bridge_lock(settings)
    assert first.acquire()
    assert not second.acquire()
    other_fleet = bridge_lock(settings.model_copy(update={"mqtt_prefix": "elsewhere"}))
    assert other_fleet.acquire()  # another prefix, another bridge
    other_fleet.release()
    first.release()
    assert second.acquire()
    assert second.held()
    second.release()

    # A holder that is killed, not stopped, lets go too: the kernel closes what it held.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK],
        env=_settings_env(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert not first.acquire()
    finally:
        holder.kill()
        holder.wait()
    wait_for(first.acquire, timeout_s=5)
    first.release()


def _lock_sessions(database_url: str) -> list[int]:
    """The server processes holding advisory locks in the test's PostgreSQL database."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            held = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            return list(conn.scalars(text(held)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_leader_that_loses_its_postgresql_session_stops_its_bridge(
    app: FastAPI, settings: Settings, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud.bridge")
    elected = ElectedBridge(settings, app.state.sessions)
    elected.start()
    try:
        wait_for(lambda: "MQTT bridge connected" in caplog.text)
        (session,) = _lock_sessions(database_url)
        engine = make_engine(database_url)
        with engine.connect() as conn:  # as a failover, or an administrator, would
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": session})
        engine.dispose()
        wait_for(lambda: "lost its lock" in caplog.text, timeout_s=10)
        wait_for(lambda: "MQTT bridge stopped" in caplog.text)
        # Nobody else wanted it: this process takes the lead again, on a new session.
        wait_for(lambda: caplog.text.count(") leads") == 2, timeout_s=10)
        assert _lock_sessions(database_url) not in ([], [session])
    finally:
        elected.stop()
    assert _lock_sessions(database_url) == []


def test_a_process_standing_by_takes_over_and_stops_at_once(
    app: FastAPI, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cloud.bridge")
    leader = bridge_lock(settings)
    assert leader.acquire()
    elected = ElectedBridge(settings, app.state.sessions)
    elected.start()
    wait_for(lambda: "is standing by; another leads" in caplog.text)
    assert "MQTT bridge connecting" not in caplog.text
    started = time.monotonic()
    elected.stop()
    assert time.monotonic() - started < 1  # no waiting out its retry interval

    elected = ElectedBridge(settings, app.state.sessions)
    elected.start()
    try:
        wait_for(lambda: caplog.text.count("is standing by") == 2)
        leader.release()
        wait_for(lambda: f"(pid {os.getpid()}) leads" in caplog.text, timeout_s=5)
        wait_for(lambda: "MQTT bridge connected" in caplog.text)
        assert not leader.acquire()
    finally:
        elected.stop()
    assert leader.acquire()  # stopping gave the lock up
    leader.release()


def _stored(database_url: str) -> list[tuple[str, str]]:
    """(episode, step) of every event in the database, duplicates included."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return [(e, t) for e, t in conn.execute(select(Event.episode_id, Event.type))]
    finally:
        engine.dispose()


def _online_in(database_url: str, device: str) -> bool:
    engine = make_engine(database_url)
    try:
        with Db(engine) as db:
            row = db.get(Device, device)
            return row is not None and row.online is True
    finally:
        engine.dispose()


def test_serve_with_workers_runs_one_bridge_which_another_takes_over(
    settings: Settings, database_url: str, publish: Publish, tmp_path: Path
) -> None:
    port = free_port()
    log_file = tmp_path / "serve.log"
    command = [str(SOUNDWARDEN_CLOUD), "serve", "--port", str(port), "--workers", "2"]
    base = f"http://127.0.0.1:{port}"
    env = _settings_env(settings)

    def leads() -> list[str]:
        """The pids of the processes that took the lead, in turn."""
        return re.findall(r"\(pid (\d+)\) leads", log_file.read_text())

    with running(command, env=env, log=log_file, probe=f"{base}/healthz", timeout_s=90):
        wait_for(lambda: len(leads()) == 1 and "standing by" in log_file.read_text(), 30)
        engine = make_engine(database_url)  # `serve` made the schema before its workers began
        with Db(engine) as db:
            accounts.add_device(db, "nursery")
            db.commit()
        engine.dispose()
        # Retained: once the bridge has it, the bridge is subscribed.
        publish(availability_topic("nursery"), "online", retain=True)
        wait_for(lambda: _online_in(database_url, "nursery"), 30)
        for i in range(20):
            publish(events_topic("nursery"), _event("nursery", f"first{i}"))
        wait_for(lambda: len(_stored(database_url)) >= 20)

        (leader,) = leads()
        os.kill(int(leader), signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: len(leads()) == 2, timeout_s=15)
        takeover_s = time.monotonic() - killed
        for i in range(20):
            publish(events_topic("nursery"), _event("nursery", f"second{i}"))
        wait_for(lambda: len(_stored(database_url)) >= 40, 30)
        time.sleep(1)  # for a second bridge's copies, were there one
        stored = _stored(database_url)
    log = log_file.read_text()
    assert sorted(stored) == sorted(
        [(f"first{i}", "start") for i in range(20)] + [(f"second{i}", "start") for i in range(20)]
    )
    assert takeover_s < 10
    assert leads()[1] != leader
    assert log.count("MQTT bridge connecting") == 2  # the first leader's, then its successor's
    assert "MQTT bridge stopped" in log  # the successor, on SIGTERM
