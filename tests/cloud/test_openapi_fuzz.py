"""schemathesis against the OpenAPI spec of a real `soundwarden-cloud serve`, on SQLite and on
PostgreSQL: no operation answers any request it generates, valid or not, with a 5xx.

Every operation is called signed in as an admin (session cookie + X-CSRF-Token) and with a device
token (Authorization: Bearer), so the fuzzing reaches past authentication on routes for people and
for devices alike. Each operation gets a fresh admin, session and device: the fuzzer signs out,
demotes users and revokes devices, which must not leave the operations after it unauthenticated.
Examples are derandomised, so a run is reproducible, and bounded (SOUNDWARDEN_FUZZ_EXAMPLES per
operation; 40 take about 40 s per database on two cores; 150 passed too, in about 4 minutes).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.schemas import APIOperation
from sqlalchemy.orm import Session as Db
from sqlalchemy.orm import sessionmaker

from cloud import accounts
from cloud.api.deps import CSRF_HEADER, SESSION_COOKIE
from cloud.core.config import Settings
from cloud.main import create_app
from tests.cloud.clipdata import flac, seed
from tests.cloud.conftest import enrol
from tests.cloud.server import cloud_server
from tests.cloud.test_clips import metadata, upload

EXAMPLES = int(os.environ.get("SOUNDWARDEN_FUZZ_EXAMPLES", "40"))  # per operation and database
pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[tuple[str, sessionmaker[Db]]]:
    """A served database with labels and clips in it; yields the base URL and a session maker
    for the test's own rows."""
    data = tmp_path / "data"
    app: FastAPI = create_app(Settings(data_dir=data, database_url=database_url))
    seed(app, {"clip_id": "c1", "uncertainty": 0.1}, {"clip_id": "c2", "label": "cry"})
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(data),
        "SOUNDWARDEN_DATABASE_URL": database_url,
    }
    try:
        with cloud_server(env, tmp_path / "server.log") as base:
            yield base, app.state.sessions
    finally:
        app.state.engine.dispose()


def admin_and_device(sessions: sessionmaker[Db]) -> requests.Session:
    """An HTTP session as a new admin and a new device at once."""
    name = f"fuzz-{uuid.uuid4().hex[:12]}"
    with sessions() as db:
        user = accounts.create_user(db, name, "fuzzing password", "admin")
        token, session = accounts.open_session(db, user, hours=1)
        device_token = accounts.add_device(db, name)
        db.commit()
        csrf = session.csrf_token
    http = requests.Session()
    http.cookies.set(SESSION_COOKIE, token)
    http.headers[CSRF_HEADER] = csrf
    http.headers["Authorization"] = f"Bearer {device_token}"
    return http


def fuzz(operation: APIOperation, base: str, http: requests.Session) -> str | None:
    """EXAMPLES requests to one operation; what went wrong, if anything."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the server log has the traceback
        suppress_health_check=list(HealthCheck),
    )
    def no_server_error(case: schemathesis.Case) -> None:
        # The credentials go with every call, in place of a generated Authorization header.
        case.call_and_validate(
            base_url=base,
            session=http,
            headers={"Authorization": http.headers["Authorization"]},
            checks=[not_a_server_error],
        )

    try:
        no_server_error()
    except (Exception, FailureGroup) as exc:  # a FailureGroup is a BaseExceptionGroup
        return f"{operation.label}: {exc}"
    return None


def test_no_operation_answers_with_a_server_error(
    server: tuple[str, sessionmaker[Db]], tmp_path: Path
) -> None:
    base, sessions = server
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30  # the whole API, not an empty or broken spec
    failures = [
        found
        for operation in operations
        if (found := fuzz(operation, base, admin_and_device(sessions))) is not None
    ]
    # The why of each 500: the server's tracebacks, without its access log around them.
    log = (tmp_path / "server.log").read_text().splitlines()
    errors = "\n".join(line for line in log if "uvicorn.access" not in line)
    assert not failures, "\n\n".join(failures) + "\n\nserver log:\n" + errors


def test_what_the_fuzzer_found_is_refused_as_bad_input(app: FastAPI, admin: TestClient) -> None:
    """Found at 150 examples per operation, so pinned here: integers past what the database
    takes, and NUL characters, which PostgreSQL's text cannot hold (SQLite's can)."""
    assert admin.get("/api/v1/jobs/18446744073709551616").status_code == 422
    assert admin.post("/api/v1/jobs/31374489365/cancel").status_code == 422
    assert admin.get("/api/v1/events", params={"offset": 10**22}).status_code == 422
    folder = admin.post("/api/v1/imports/folder", json={"path": "/tmp/\x00x"})
    assert folder.status_code == 422
    for method, path, kwargs in [
        ("GET", "/api/v1/events", {"params": {"label": "\x00x"}}),
        ("GET", "/api/v1/models/compare", {"params": {"name": "a", "a": "\x00", "b": "x"}}),
        ("POST", "/api/v1/jobs/assist", {"json": {"model": "x", "version": "9\x00"}}),
        ("POST", "/api/v1/labels/apply", {"json": {"label": "cry", "clip_ids": ["\x00"]}}),
    ]:
        # Nothing matches on SQLite; PostgreSQL cannot even look: both are the request's fault.
        assert admin.request(method, path, **kwargs).status_code in (200, 404, 422), path
    # The same in a device's upload (found by hand: the fuzzer's audio never decodes).
    token = enrol(app, "pi-fuzz")
    meta = metadata("nul-label", device="pi-fuzz", label="c\x00y")
    assert upload(admin, token, meta, flac()[0], "clip.flac").status_code in (201, 422)
