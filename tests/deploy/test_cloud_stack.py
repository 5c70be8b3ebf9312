"""The cloud stack of deploy/: run without containers, from its systemd units, against real
servers (PostgreSQL, Redis, the production Mosquitto configuration); the compose file checked
for shape only, since containers cannot run here, with its health check commands run against
those same servers where this machine has the tools.

The units' command lines and environment are taken from the unit files themselves (only the
virtualenv path, the port and the data directory are the test's), so a unit that would not
start its service fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import yaml

from cloud.core.config import Settings
from models.contract import EventPayload, ModelRef, events_topic
from tests.cloud.server import running
from tests.conftest import REPO
from tests.deploy.broker import BRIDGE, KITCHEN, Broker, Peer, password, production_broker
from tests.deploy.units import INSTALLED_BINS, directives
from tests.mosquitto import free_port, wait_for

CLOUD = REPO / "deploy" / "cloud"
COMPOSE = CLOUD / "compose.yaml"
ENV_EXAMPLE = CLOUD / "cloud.env.example"
SETTINGS = {f"SOUNDWARDEN_{name.upper()}" for name in Settings.model_fields}
POSTGRES_ADMIN = os.environ.get(
    "SOUNDWARDEN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS = "redis://127.0.0.1:6379/14"  # a database number no other test uses
ADMIN = ("ada", "ada's password")
ONE_SHOT = {"minio-bucket"}  # runs once and exits: nothing to check the health of


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def environment_names(service: dict[str, Any]) -> set[str]:
    env = service.get("environment", {})
    return set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}


def test_compose_has_the_whole_stack_with_health_checks_and_volumes() -> None:
    services = compose()["services"]
    assert set(services) == {"api", "worker", "postgres", "redis", "mosquitto", "minio"} | ONE_SHOT
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] in ("service_healthy", "service_completed_successfully")
    volumes = set(compose()["volumes"])
    for name in ("api", "worker", "postgres", "redis", "mosquitto", "minio"):
        named = {v.split(":")[0] for v in services[name]["volumes"] if not v.startswith(".")}
        assert named and named <= volumes, name


def test_compose_names_only_settings_that_exist_and_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        unknown = {n for n in environment_names(service) if n.startswith("SOUNDWARDEN_")}
        assert unknown <= SETTINGS, f"{name}: no such setting {unknown - SETTINGS}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("../") or source == "./mosquitto.conf":
                assert (CLOUD / source).is_file(), f"{name} mounts missing {source}"
    assert (CLOUD / "Dockerfile").is_file()


def test_the_env_example_names_only_settings_that_exist() -> None:
    names = re.findall(r"^#?(SOUNDWARDEN_\w+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert names and set(names) <= SETTINGS, set(names) - SETTINGS


def unit_command(name: str, **replace: str) -> list[str]:
    """The unit's ExecStart with this checkout's virtualenv, and `replace` applied."""
    command = directives(name)["ExecStart"][0]
    for installed in INSTALLED_BINS:
        command = command.replace(installed, f"{Path(sys.executable).parent}/")
    for old, new in replace.items():
        command = command.replace(old, new)
    return shlex.split(command)


def unit_environment(name: str, data_dir: Path, env_file: dict[str, str]) -> dict[str, str]:
    """What systemd would give the service: its Environment= lines and its EnvironmentFile=,
    with the data directory moved into the test's."""
    env = {**os.environ}
    for value in directives(name)["Environment"]:
        key, _, setting = value.partition("=")
        env[key] = setting
    env.update(env_file)
    env["SOUNDWARDEN_DATA_DIR"] = env["HOME"] = str(data_dir)
    return env


def env_file(broker: Broker, database_url: str) -> dict[str, str]:
    """cloud.env.example with its PostgreSQL, Celery and MQTT lines switched on and pointed at
    this test's servers."""
    switched_on = ("SOUNDWARDEN_DATABASE_URL", "SOUNDWARDEN_JOBS", "SOUNDWARDEN_REDIS_URL")
    settings: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^(#?)(SOUNDWARDEN_\w+)=(.*)$", line)
        if match and (not match[1] or match[2] in switched_on):
            settings[match[2]] = match[3]
    assert settings["SOUNDWARDEN_MQTT_URL"].startswith("mqtt://cloud.bridge:CHANGE-ME@")
    settings["SOUNDWARDEN_MQTT_URL"] = f"mqtt://{BRIDGE}:{password(BRIDGE)}@127.0.0.1:{broker.port}"
    settings["SOUNDWARDEN_DATABASE_URL"] = database_url
    settings["SOUNDWARDEN_REDIS_URL"] = REDIS
    settings["SOUNDWARDEN_SECURE_COOKIES"] = "false"  # the test speaks plain HTTP
    return settings


@pytest.fixture()
def postgres() -> Iterator[str]:
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL NOT TESTED: no server at {POSTGRES_ADMIN} ({exc})")
    name = f"soundwarden_deploy_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def celery_redis() -> None:
    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"Redis NOT TESTED: no server at {REDIS} ({exc})")
    client.flushdb()


def health_check(service: str, **replace: str) -> list[str]:
    """A compose health check as a local command line, with `replace` applied."""
    test = compose()["services"][service]["healthcheck"]["test"]
    # CMD-SHELL runs its one string with sh; compose turns $$ into $.
    command = ["sh", "-c", test[1].replace("$$", "$")] if test[0] == "CMD-SHELL" else test[1:]
    for old, new in replace.items():
        command = [part.replace(old, new) for part in command]
    return list(command)


@contextmanager
def worker_process(command: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    """The Celery worker, until it logs that it is ready; stopped with SIGTERM afterwards."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        assert process.poll() is None, log.read_text()
        return " ready." in log.read_text()

    try:
        wait_for(ready, timeout_s=90)
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def add_account(cli: str, env: dict[str, str], *command: str) -> None:
    done = subprocess.run(
        [cli, *command], env=env, input=ADMIN[1] + "\n", text=True, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def event_from(device: str) -> EventPayload:
    return EventPayload(
        id=uuid.uuid4().hex,
        type="start",
        label="cry",
        score=0.99,
        max_score=0.99,
        started_at=datetime.now(UTC),
        level_dbfs=-20.0,
        model=ModelRef(name="cry-detector", version="1.1.0"),
        device=device,
    )


@pytest.mark.slow
def test_the_units_run_the_stack_a_device_event_lands_and_the_health_checks_pass(
    tmp_path: Path, postgres: str, celery_redis: None
) -> None:
    with production_broker(tmp_path) as broker:
        settings = env_file(broker, postgres)
        data = tmp_path / "cloud-data"
        data.mkdir()
        api_env = unit_environment("soundwarden-cloud.service", data, settings)
        worker_env = unit_environment("soundwarden-cloud-worker.service", data, settings)
        worker_env["HOSTNAME"] = socket.gethostname()  # as a container has it, for the check
        cli = unit_command("soundwarden-cloud.service")[0]
        add_account(cli, api_env, "create-user", ADMIN[0], "--role", "admin", "--password-stdin")
        add_account(cli, api_env, "add-device", KITCHEN)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = unit_command("soundwarden-cloud.service", **{"--port 8000": f"--port {port}"})
        worker = unit_command("soundwarden-cloud-worker.service")
        with (
            running(api, env=api_env, log=tmp_path / "api.log", probe=f"{base}/api/v1/health"),
            worker_process(worker, worker_env, tmp_path / "worker.log"),
        ):
            # A device, over TLS with its own account, publishes an event the bridge stores.
            event = event_from(KITCHEN)
            device = Peer(broker, KITCHEN, tls=True)
            try:
                published = device.publish(events_topic(KITCHEN), event.model_dump_json())
                assert not published.is_failure
            finally:
                device.close()
            with httpx.Client(base_url=base) as browser:
                login = {"username": ADMIN[0], "password": ADMIN[1]}
                assert browser.post("/api/v1/auth/login", json=login).status_code == 200
                wait_for(
                    lambda: (
                        [e["episode_id"] for e in browser.get("/api/v1/events").json()]
                        == [event.id]
                    ),
                    timeout_s=30,
                )

            # The compose health checks, run against the same kinds of servers.
            venv_bin = f"{Path(sys.executable).parent}/"
            checks = {
                # The image's `python` is the one soundwarden is installed in: this one here.
                "api": [sys.executable, *health_check("api", **{":8000": f":{port}"})[1:]],
                "worker": health_check("worker", **{"celery -A": f"{venv_bin}celery -A"}),
                "mosquitto": health_check("mosquitto", **{"-p 1883": f"-p {broker.port}"}),
                "redis": health_check("redis"),
            }
            if shutil.which("pg_isready"):
                host = postgres.split("@")[1].split("/")[0].split(":")[0]
                checks["postgres"] = ["pg_isready", "-h", host, "-U", "postgres"]
            env = {**worker_env, "MQTT_BRIDGE_PASSWORD": password(BRIDGE)}
            for service, command in checks.items():
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, (service, command, done.stdout, done.stderr)
