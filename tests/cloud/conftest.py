"""The cloud under test: every test that takes `app` runs against SQLite and PostgreSQL.

PostgreSQL is the one on 127.0.0.1:5432 (SOUNDWARDEN_TEST_POSTGRES overrides the admin URL); each
test gets a database of its own, dropped afterwards. Where no server answers, the PostgreSQL
half skips with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud import accounts
from cloud.api.deps import CSRF_HEADER
from cloud.core.config import Settings
from cloud.main import create_app

POSTGRES_ADMIN = os.environ.get(
    "SOUNDWARDEN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    try:
        with psycopg.connect(POSTGRES_ADMIN, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL NOT TESTED: no server at {POSTGRES_ADMIN} ({exc})")
    return POSTGRES_ADMIN


def _postgres_database(admin: str) -> Iterator[str]:
    name = f"soundwarden_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
    else:
        yield from _postgres_database(request.getfixturevalue("postgres_admin"))


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url)


@pytest.fixture
def app(settings: Settings) -> Iterator[FastAPI]:
    app = create_app(settings)
    yield app
    app.state.engine.dispose()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def add_user(app: FastAPI, username: str, role: str, password: str = PASSWORD) -> None:
    with app.state.sessions() as db:
        accounts.create_user(db, username, password, role)
        db.commit()


def enrol(app: FastAPI, device_id: str) -> str:
    with app.state.sessions() as db:
        token = accounts.add_device(db, device_id)
        db.commit()
    return token


def signed_in(app: FastAPI, username: str, role: str) -> TestClient:
    """A client signed in as a new user, sending the CSRF token on every request."""
    add_user(app, username, role)
    client = TestClient(app)
    response = client.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    client.headers[CSRF_HEADER] = response.json()["csrf_token"]
    return client


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with signed_in(app, "ada", "admin") as client:
        yield client


@pytest.fixture
def labeller(app: FastAPI) -> Iterator[TestClient]:
    with signed_in(app, "lee", "labeller") as client:
        yield client
