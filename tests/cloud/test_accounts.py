"""Users, sessions, CSRF, the login rate limit and device tokens, over SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from cloud.api.deps import CSRF_HEADER, SESSION_COOKIE
from cloud.core.security import token_hash
from cloud.tables import Device, Session, User
from tests.cloud.conftest import PASSWORD, add_user, enrol


def test_login_sets_an_httponly_cookie_and_me_answers(app: FastAPI) -> None:
    add_user(app, "ada", "admin")
    with TestClient(app) as client:
        assert client.get("/api/v1/auth/me").status_code == 401
        response = client.post("/api/v1/auth/login", json={"username": "ada", "password": PASSWORD})
        assert response.status_code == 200
        cookie = response.headers["set-cookie"]
        assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        me = client.get("/api/v1/auth/me").json()
        assert me["username"] == "ada" and me["role"] == "admin"
        # The database holds the token's hash, never the token.
        token = client.cookies[SESSION_COOKIE]
        with app.state.sessions() as db:
            assert db.get(Session, token_hash(token)) is not None
            assert db.scalar(select(Session).where(Session.token_hash == token)) is None


def test_passwords_are_stored_hashed(app: FastAPI) -> None:
    add_user(app, "ada", "admin")
    with app.state.sessions() as db:
        stored = db.scalar(select(User.password_hash).where(User.username == "ada"))
    assert stored is not None and PASSWORD not in stored and stored.startswith("$argon2id$")


def test_wrong_password_and_unknown_user_get_the_same_401(app: FastAPI) -> None:
    add_user(app, "ada", "admin")
    with TestClient(app) as client:
        wrong = client.post("/api/v1/auth/login", json={"username": "ada", "password": "nope!nope"})
        unknown = client.post("/api/v1/auth/login", json={"username": "bob", "password": "x" * 9})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


def test_login_is_rate_limited_per_user_and_the_right_password_waits_too(app: FastAPI) -> None:
    add_user(app, "ada", "admin")
    with TestClient(app) as client:
        for _ in range(5):
            bad = client.post(
                "/api/v1/auth/login", json={"username": "ada", "password": "guess123"}
            )
            assert bad.status_code == 401
        limited = client.post("/api/v1/auth/login", json={"username": "ada", "password": PASSWORD})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0


def test_changes_need_the_csrf_token(app: FastAPI, admin: TestClient) -> None:
    token = admin.headers.pop(CSRF_HEADER)
    body = {"username": "lee", "password": PASSWORD, "role": "labeller"}
    assert admin.post("/api/v1/users", json=body).status_code == 403
    admin.headers[CSRF_HEADER] = "forged"
    assert admin.post("/api/v1/users", json=body).status_code == 403
    admin.headers[CSRF_HEADER] = token
    assert admin.post("/api/v1/users", json=body).status_code == 201


def test_logout_ends_the_session(admin: TestClient) -> None:
    assert admin.post("/api/v1/auth/logout").status_code == 204
    assert admin.get("/api/v1/auth/me").status_code == 401


def test_admin_manages_users_labellers_cannot(admin: TestClient, labeller: TestClient) -> None:
    body = {"username": "kim", "password": PASSWORD, "role": "labeller"}
    assert labeller.post("/api/v1/users", json=body).status_code == 403
    assert labeller.get("/api/v1/users").status_code == 403
    assert admin.post("/api/v1/users", json=body).status_code == 201
    again = admin.post("/api/v1/users", json=body)
    assert again.status_code == 400 and "exists" in again.json()["detail"]
    short = admin.post("/api/v1/users", json={**body, "username": "sam", "password": "short"})
    assert short.status_code == 400 and "8 characters" in short.json()["detail"]
    names = [u["username"] for u in admin.get("/api/v1/users").json()]
    assert names == ["ada", "kim", "lee"]
    assert admin.patch("/api/v1/users/kim", json={"disabled": True}).status_code == 200
    with TestClient(admin.app) as kim:
        login = kim.post("/api/v1/auth/login", json={"username": "kim", "password": PASSWORD})
        assert login.status_code == 401
    selfie = admin.patch("/api/v1/users/ada", json={"role": "labeller"})
    assert selfie.status_code == 400


def test_device_tokens_are_hashed_work_and_can_be_revoked_and_rotated(
    app: FastAPI, admin: TestClient, labeller: TestClient
) -> None:
    assert labeller.post("/api/v1/devices", json={"id": "pi-1"}).status_code == 403
    created = admin.post("/api/v1/devices", json={"id": "pi-1"})
    assert created.status_code == 201
    token = created.json()["token"]
    with app.state.sessions() as db:
        device = db.get(Device, "pi-1")
        assert device is not None and device.token_hash == token_hash(token)
    assert admin.post("/api/v1/devices", json={"id": "pi-1"}).status_code == 400
    assert admin.post("/api/v1/devices", json={"id": "../etc"}).status_code == 400
    assert [d["id"] for d in labeller.get("/api/v1/devices").json()] == ["pi-1"]

    assert admin.post("/api/v1/devices/pi-1/revoke").json()["revoked_at"] is not None
    rotated = admin.post("/api/v1/devices/pi-1/token").json()["token"]
    assert rotated != token
    assert admin.post("/api/v1/devices/nope/revoke").status_code == 404


def test_cli_creates_users_and_enrols_devices(tmp_path: Path, database_url: str) -> None:
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(tmp_path / "data"),
        "SOUNDWARDEN_DATABASE_URL": database_url,
    }
    exe = str(Path(sys.executable).parent / "soundwarden-cloud")

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [exe, *args],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    made = cli("create-user", "ada", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert made.returncode == 0, made.stderr
    dup = cli("create-user", "ada", "--password-stdin", stdin=PASSWORD + "\n")
    assert dup.returncode == 1 and "exists already" in dup.stderr
    enrolled = cli("add-device", "pi-kitchen")
    assert enrolled.returncode == 0, enrolled.stderr
    token = enrolled.stdout.strip().splitlines()[-1]
    assert len(token) >= 40
    assert "pi-kitchen\tactive" in cli("devices").stdout
    assert cli("revoke-device", "pi-kitchen").returncode == 0
    assert "pi-kitchen\trevoked" in cli("devices").stdout
    missing = cli("revoke-device", "nope")
    assert missing.returncode == 1 and "no device 'nope'" in missing.stderr


def test_enrolled_token_identifies_the_device(app: FastAPI) -> None:
    from cloud.accounts import device_for_token

    token = enrol(app, "pi-2")
    with app.state.sessions() as db:
        device = device_for_token(db, token)
        assert device is not None and device.id == "pi-2"
        assert device_for_token(db, token + "x") is None
