"""Background jobs over SQLite and PostgreSQL: the embedded runner's failures, cancels, crash
recovery and shutdown, the jobs API, and one import through a real Celery worker on Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cloud.core.config import Settings
from cloud.jobs import JobContext, create_job, job
from cloud.main import create_app
from cloud.tables import Clip, Job, User, utcnow
from tests.cloud.conftest import signed_in
from tests.cloud.jobutil import wait_job
from tests.conftest import CRY_FULL_BAND

CELERY_REDIS = "redis://127.0.0.1:6379/13"  # a database number no other test or service uses


@job("test-wait")
def _wait_until_cancelled(ctx: JobContext) -> dict[str, Any]:
    ctx.log("waiting to be cancelled")
    while not ctx.cancelled():
        ctx.progress(0.5, "waiting")
        time.sleep(0.02)
    return {"waited": True}


@job("test-fail")
def _fail(ctx: JobContext) -> dict[str, Any]:
    ctx.log("looking for the recording shelf")
    raise ValueError("the recording shelf is empty")


def start(app: FastAPI, kind: str, username: str | None = None) -> int:
    with app.state.sessions() as db:
        user = db.scalar(select(User).where(User.username == username)) if username else None
        row = create_job(db, kind, {}, user)
        db.commit()
    app.state.jobs.submit(row.id)
    return row.id


def wait_waiting(client: TestClient, job_id: int) -> None:
    """Until a test-wait job has reported its progress (it is then inside its loop)."""
    deadline = time.monotonic() + 30
    while client.get(f"/api/v1/jobs/{job_id}").json()["progress"] != 0.5:
        assert time.monotonic() < deadline, f"job {job_id} never started waiting"
        time.sleep(0.05)


def test_a_failing_job_says_why_and_the_list_is_newest_first(app: FastAPI) -> None:
    with signed_in(app, "ada", "admin") as admin:
        first, second = start(app, "test-fail"), start(app, "test-fail")
        job = wait_job(admin, first)
        assert job["state"] == "failed"
        assert job["message"] == "the recording shelf is empty"
        assert "looking for the recording shelf" in job["log_tail"]
        assert "Traceback" in job["log_tail"] and "ValueError" in job["log_tail"]
        assert job["finished_at"] is not None
        wait_job(admin, second)
        failed = admin.get("/api/v1/jobs", params={"state": "failed"}).json()
        assert [j["id"] for j in failed] == [second, first]
        assert admin.get("/api/v1/jobs", params={"kind": "import"}).json() == []
        assert admin.get("/api/v1/jobs/999999").status_code == 404


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_checkpoint(
    app: FastAPI,
) -> None:
    assert app.state.settings.embedded_workers == 2
    with signed_in(app, "ada", "admin") as admin:
        running = [start(app, "test-wait"), start(app, "test-wait")]
        for job_id in running:
            wait_waiting(admin, job_id)
        queued = start(app, "test-wait")  # both workers are busy
        assert admin.get(f"/api/v1/jobs/{queued}").json()["state"] == "queued"

        cancelled = admin.post(f"/api/v1/jobs/{queued}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["state"] == "cancelled"
        assert cancelled.json()["finished_at"] is not None

        stopping = admin.post(f"/api/v1/jobs/{running[0]}/cancel").json()
        assert stopping["state"] == "cancelled" and "next checkpoint" in stopping["message"]
        stopped = wait_job(admin, running[0])
        assert stopped["state"] == "cancelled" and stopped["result"] == {"waited": True}
        assert stopped["message"].startswith("cancelled at 50%")
        assert admin.post(f"/api/v1/jobs/{running[0]}/cancel").status_code == 409

        admin.post(f"/api/v1/jobs/{running[1]}/cancel")
        wait_job(admin, running[1])
        # The worker that came free never started the job cancelled in the queue.
        assert admin.get(f"/api/v1/jobs/{queued}").json()["started_at"] is None


def test_only_its_creator_or_an_admin_may_cancel_a_job(app: FastAPI) -> None:
    with signed_in(app, "ada", "admin") as admin, signed_in(app, "lee", "labeller") as lee:
        admins = start(app, "test-wait", "ada")
        own = start(app, "test-wait", "lee")
        assert lee.post(f"/api/v1/jobs/{admins}/cancel").status_code == 403
        assert lee.post(f"/api/v1/jobs/{own}/cancel").status_code == 200
        assert admin.post(f"/api/v1/jobs/{admins}/cancel").status_code == 200
        assert wait_job(admin, admins)["state"] == wait_job(lee, own)["state"] == "cancelled"


def test_start_fails_jobs_a_crash_left_running_and_runs_the_queued_ones(app: FastAPI) -> None:
    with app.state.sessions() as db:
        crashed = Job(kind="import", state="running", params={}, started_at=utcnow())
        waiting = Job(kind="assist", state="queued", params={"model": "cry-detector"})
        db.add_all([crashed, waiting])
        db.commit()
    with signed_in(app, "ada", "admin") as admin:  # the service starts
        job = admin.get(f"/api/v1/jobs/{crashed.id}").json()
        assert job["state"] == "failed" and "interrupted" in job["message"]
        assert job["finished_at"] is not None
        ran = wait_job(admin, waiting.id)
        assert ran["state"] == "succeeded", ran
        assert ran["result"]["scored"] == 0


def test_a_shutdown_queues_the_running_job_again_for_the_next_start(app: FastAPI) -> None:
    admin = signed_in(app, "ada", "admin")
    with admin:
        job_id = start(app, "test-wait")
        wait_job(admin, job_id, states=("running",))
    with app.state.sessions() as db:
        row = db.get_one(Job, job_id)
        assert row.state == "queued" and "shutdown" in row.message
        assert "waiting to be cancelled" in row.log
    with admin:  # the next start runs it again
        wait_job(admin, job_id, states=("running",))
        admin.post(f"/api/v1/jobs/{job_id}/cancel")
        assert wait_job(admin, job_id)["state"] == "cancelled"


@pytest.fixture
def celery_redis() -> Any:
    client = redis.Redis.from_url(CELERY_REDIS)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"CELERY RUNNER NOT TESTED: no Redis at {CELERY_REDIS} ({exc})")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_celery_worker_runs_an_import_submitted_through_the_api(
    tmp_path: Path, celery_redis: Any
) -> None:
    # A file SQLite database and a data folder both processes share, as on one machine.
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        jobs="celery",
        redis_url=CELERY_REDIS,
    )
    app = create_app(settings)
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(settings.data_dir),
        "SOUNDWARDEN_DATABASE_URL": settings.db_url,
        "SOUNDWARDEN_JOBS": "celery",
        "SOUNDWARDEN_REDIS_URL": CELERY_REDIS,
    }
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "soundwarden-cloud"), "worker", "--pool", "solo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with signed_in(app, "ada", "admin") as admin:
            response = admin.post(
                "/api/v1/imports",
                files=[("files", (CRY_FULL_BAND.name, CRY_FULL_BAND.read_bytes(), "audio/wav"))],
                data={"segment_s": "5"},
            )
            assert response.status_code == 202, response.text
            job = wait_job(admin, response.json()["id"], timeout_s=120)
            assert job["state"] == "succeeded", (job, worker_log.read_text())
            assert job["result"]["clips"] == 2  # 7.0 s: 0-5 s and 5-7 s
            with app.state.sessions() as db:
                assert db.scalar(select(func.count()).select_from(Clip)) == 2
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        app.state.engine.dispose()


def test_a_job_the_queue_cannot_take_is_refused_and_failed_saying_why(settings: Settings) -> None:
    unreachable = settings.model_copy(
        update={"jobs": "celery", "redis_url": "redis://127.0.0.1:9/0"}
    )
    app = create_app(unreachable)
    try:
        with signed_in(app, "ada", "admin") as admin:
            response = admin.post("/api/v1/jobs/assist", json={"model": "cry-detector"})
            assert response.status_code == 503
            assert "could not queue the job" in response.json()["detail"]
            [job] = admin.get("/api/v1/jobs").json()
            assert job["state"] == "failed" and job["message"] == response.json()["detail"]
    finally:
        app.state.engine.dispose()
