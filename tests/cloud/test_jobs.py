"""Background jobs over SQLite and PostgreSQL: the embedded runner's failures, cancels, leases
(several services on one database, a process that died) and shutdown, the jobs API, and real
Celery workers on Redis: one running an import, and ones killed while they run it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from cloud.core.config import Settings
from cloud.jobs import JobContext, create_job, job
from cloud.jobs.core import MAX_ATTEMPTS, worker_name
from cloud.jobs.imports import segments
from cloud.main import create_app
from cloud.splits import SPLITS
from cloud.tables import Clip, Job, User, utcnow
from tests.cloud.conftest import signed_in
from tests.cloud.jobutil import (
    RATE,
    long_recording,
    seed_training_clips,
    wait_job,
    wait_until,
)
from tests.conftest import CRY_FULL_BAND

CELERY_REDIS = "redis://127.0.0.1:6379/13"  # a database number no other test or service uses
LEASE_S = 2.0  # short, so that a dead worker is noticed within seconds
LONG_S = 300.0  # 1 s clips every 0.25 s: about 1,200 clips, some seconds of work


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


def test_start_runs_again_a_job_whose_process_died_and_runs_the_queued_ones(
    app: FastAPI,
) -> None:
    # What processes that died leave behind: jobs running (or stopping after a cancel) whose
    # heartbeat stopped longer than a lease ago.
    gone = utcnow() - timedelta(seconds=2 * app.state.settings.job_lease_s)
    with app.state.sessions() as db:
        died = Job(
            kind="assist",
            state="running",
            params={"model": "cry-detector"},
            worker="gone:41",
            attempts=1,
            progress=0.4,
            started_at=gone,
            heartbeat_at=gone,
        )
        died_twice = Job(
            kind="import",
            state="running",
            params={},
            worker="gone:42",
            attempts=2,
            started_at=gone,
            heartbeat_at=gone,
        )
        stopping = Job(
            kind="import",
            state="cancelled",
            params={},
            worker="gone:43",
            attempts=1,
            started_at=gone,
            heartbeat_at=gone,
        )
        waiting = Job(kind="assist", state="queued", params={"model": "cry-detector"})
        db.add_all([died, died_twice, stopping, waiting])
        db.commit()
    with signed_in(app, "ada", "admin") as admin:  # the service starts
        failed = admin.get(f"/api/v1/jobs/{died_twice.id}").json()
        assert failed["state"] == "failed" and failed["finished_at"] is not None
        assert failed["message"].startswith("its worker (gone:42) died on every attempt (2 of 2)")
        assert "out of memory" in failed["message"] and "log" in failed["message"]
        cancelled = admin.get(f"/api/v1/jobs/{stopping.id}").json()
        assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None
        assert "its worker (gone:43) stopped answering" in cancelled["message"]

        again = wait_job(admin, died.id)
        assert again["state"] == "succeeded", again
        assert again["attempts"] == 2 and again["worker"] == worker_name()
        assert "attempt 1: its worker (gone:41) stopped answering at 40%" in again["log_tail"]
        ran = wait_job(admin, waiting.id)
        assert ran["state"] == "succeeded", ran
        assert ran["result"]["scored"] == 0 and ran["attempts"] == 1


def _seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def test_a_second_service_on_the_database_leaves_the_first_ones_job_alone(
    settings: Settings,
) -> None:
    leased = settings.model_copy(update={"job_lease_s": LEASE_S})
    first, second = create_app(leased), create_app(leased)
    try:
        with signed_in(first, "ada", "admin") as admin:
            job_id = start(first, "test-wait")
            wait_waiting(admin, job_id)
            with TestClient(second):  # another service (or `serve --workers` worker) starts
                running = admin.get(f"/api/v1/jobs/{job_id}").json()
                assert running["state"] == "running" and running["attempts"] == 1
                # Two leases on, the second service's reaper has looked at it four times.
                since = running["heartbeat_at"]
                wait_until(
                    admin,
                    job_id,
                    lambda j: _seconds_between(since, j["heartbeat_at"]) > 2 * LEASE_S,
                    f"kept alive by its heartbeat for {2 * LEASE_S} s",
                )
                alive = admin.get(f"/api/v1/jobs/{job_id}").json()
                assert alive["state"] == "running" and alive["attempts"] == 1, alive
                assert alive["worker"] == worker_name() and alive["progress"] == 0.5
                assert admin.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
                assert wait_job(admin, job_id)["state"] == "cancelled"
    finally:
        first.state.engine.dispose()
        second.state.engine.dispose()


def test_a_running_service_runs_again_a_job_whose_process_died(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"job_lease_s": LEASE_S}))
    try:
        with signed_in(app, "ada", "admin") as admin:
            # Another service on this database is killed while it runs an assist job: its row
            # stays running, and its heartbeat stops now.
            with app.state.sessions() as db:
                died = Job(
                    kind="assist",
                    state="running",
                    params={"model": "cry-detector"},
                    worker="gone:41",
                    attempts=1,
                    progress=0.25,
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
                db.add(died)
                db.commit()
            queued = wait_until(
                admin, died.id, lambda j: j["attempts"] == 2, "taken over", timeout_s=30
            )
            assert queued["worker"] == worker_name()
            job = wait_job(admin, died.id)
            assert job["state"] == "succeeded", job
            assert "attempt 1: its worker (gone:41) stopped answering at 25%" in job["log_tail"]
    finally:
        app.state.engine.dispose()


def test_a_run_that_lost_its_job_to_another_writes_nothing_more(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    with signed_in(app, "ada", "admin") as admin:
        job_id = start(app, "test-wait")
        wait_waiting(admin, job_id)
        # This process stalled past its lease: another one reaped the job and runs it now.
        taken = {"attempts": 2, "worker": "other:7", "progress": 0.1, "message": "other's"}
        with app.state.sessions() as db:
            db.execute(update(Job).where(Job.id == job_id).values(**taken))
            db.commit()
        # The stalled run stops at its next checkpoint, leaving the row to the other run.
        deadline = time.monotonic() + 30
        while "after it had lost its lease; not written" not in caplog.text:
            assert time.monotonic() < deadline, "the stalled run never stopped"
            time.sleep(0.05)
        job = admin.get(f"/api/v1/jobs/{job_id}").json()
        assert {key: job[key] for key in taken} == taken
        assert job["state"] == "running" and job["result"] is None


def test_a_shutdown_queues_the_running_job_again_for_the_next_start(app: FastAPI) -> None:
    admin = signed_in(app, "ada", "admin")
    with admin:
        job_id = start(app, "test-wait")
        wait_job(admin, job_id, states=("running",))
    with app.state.sessions() as db:
        row = db.get_one(Job, job_id)
        assert row.state == "queued" and "shutdown" in row.message
        assert "waiting to be cancelled" in row.log
        assert row.attempts == 0 and row.worker is None  # an interrupted run does not count
    with admin:  # the next start runs it again
        running = wait_job(admin, job_id, states=("running",))
        assert running["attempts"] == 1 and running["worker"] == worker_name()
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


class Workers:
    """Real `soundwarden-cloud worker` processes (one job at a time, in the worker process
    itself) on a service's database, storage and Redis, each in a process group of its own."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.env = {
            **os.environ,
            "SOUNDWARDEN_DATA_DIR": str(settings.data_dir),
            "SOUNDWARDEN_DATABASE_URL": settings.db_url,
            "SOUNDWARDEN_JOBS": "celery",
            "SOUNDWARDEN_REDIS_URL": settings.redis_url,
            "SOUNDWARDEN_JOB_LEASE_S": str(settings.job_lease_s),
        }
        self.log = folder / "workers.log"
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            worker = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "soundwarden-cloud"),
                    "worker",
                    "--pool",
                    "solo",
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(worker)
        return worker

    @staticmethod
    def name(worker: subprocess.Popen[bytes]) -> str:
        return f"{socket.gethostname()}:{worker.pid}"

    @staticmethod
    def kill(worker: subprocess.Popen[bytes]) -> None:
        """As the OOM killer or a lost machine would: at once, nothing cleaned up."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.poll() is None:
                worker.terminate()
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.kill(worker)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def celery_service(tmp_path: Path, celery_redis: Any) -> Iterator[tuple[FastAPI, Workers]]:
    """A service sending jobs to Celery, and its workers: a file SQLite database and a data
    folder all processes share, as on one machine; a short lease."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'cloud.db'}",
        jobs="celery",
        redis_url=CELERY_REDIS,
        job_lease_s=LEASE_S,
    )
    app = create_app(settings)
    workers = Workers(settings, tmp_path)
    try:
        yield app, workers
    finally:
        workers.stop_all()
        app.state.engine.dispose()


def test_a_celery_worker_runs_an_import_submitted_through_the_api(
    celery_service: tuple[FastAPI, Workers],
) -> None:
    app, workers = celery_service
    worker = workers.start()
    with signed_in(app, "ada", "admin") as admin:
        response = admin.post(
            "/api/v1/imports",
            files=[("files", (CRY_FULL_BAND.name, CRY_FULL_BAND.read_bytes(), "audio/wav"))],
            data={"segment_s": "5"},
        )
        assert response.status_code == 202, response.text
        job = wait_job(admin, response.json()["id"], timeout_s=120)
        assert job["state"] == "succeeded", (job, workers.output())
        assert job["result"]["clips"] == 2  # 7.0 s: 0-5 s and 5-7 s
        assert job["worker"] == workers.name(worker) and job["attempts"] == 1
        with app.state.sessions() as db:
            assert db.scalar(select(func.count()).select_from(Clip)) == 2


def test_a_celery_worker_trains_a_model_into_the_registry(
    celery_service: tuple[FastAPI, Workers],
) -> None:
    app, workers = celery_service
    seed_training_clips(app, SPLITS)
    worker = workers.start()
    with signed_in(app, "ada", "admin") as admin:
        body = {"name": "cry-detector", "labels": ["cry", "other"], "epochs": 1}
        started = admin.post("/api/v1/jobs/train", json=body)
        assert started.status_code == 202, started.text
        job = wait_job(admin, started.json()["id"], timeout_s=300)
        assert job["state"] == "succeeded", (job, workers.output())
        assert job["worker"] == workers.name(worker)
        # The worker signed the bundle with the service's key: the service lists and serves it.
        version = job["result"]["model"]["version"]
        model = admin.get(f"/api/v1/models/cry-detector/{version}")
        assert model.status_code == 200 and model.json()["job_id"] == job["id"]
        download = admin.get(f"/api/v1/models/cry-detector/{version}/bundle.tar.gz")
        assert download.status_code == 200 and len(download.content) > 10_000


def import_long_recording(admin: TestClient, folder: Path) -> tuple[int, int]:
    """Queue the import of a LONG_S recording in 1 s clips every 0.25 s: the job id, and the
    clips it makes."""
    recording = long_recording(folder / "night.wav", LONG_S)
    response = admin.post(
        "/api/v1/imports",
        files=[("files", (recording.name, recording.read_bytes(), "audio/wav"))],
        data={"segment_s": "1", "overlap_s": "0.75"},
    )
    assert response.status_code == 202, response.text
    return response.json()["id"], len(segments(round(LONG_S * RATE), RATE, 1.0, 0.75))


def kill_mid_job(
    admin: TestClient, job_id: int, workers: Workers, attempt: int
) -> tuple[str, float]:
    """Start a worker, and kill it once it is a tenth into the job: its name, and the progress
    the job showed then."""
    worker = workers.start()
    running = wait_until(
        admin,
        job_id,
        lambda j: j["state"] == "running" and j["attempts"] == attempt and j["progress"] >= 0.1,
        f"a tenth into attempt {attempt}",
        timeout_s=120,
    )
    assert running["worker"] == workers.name(worker), (running, workers.output())
    assert running["heartbeat_at"] is not None
    workers.kill(worker)
    return workers.name(worker), running["progress"]


def stopped_at(text: str, worker: str) -> float:
    """How far the job had got, as the service's words about `worker` stopping say."""
    found = re.search(rf"its worker \({re.escape(worker)}\) stopped answering at (\d+)%", text)
    assert found, text
    return int(found[1]) / 100


def test_a_job_whose_celery_worker_is_killed_is_run_again_by_another_worker(
    tmp_path: Path, celery_service: tuple[FastAPI, Workers]
) -> None:
    app, workers = celery_service
    with signed_in(app, "ada", "admin") as admin:
        job_id, clips = import_long_recording(admin, tmp_path)
        killed, progress = kill_mid_job(admin, job_id, workers, attempt=1)

        # Within a lease and a half, the service notices and queues the job again.
        queued = wait_until(admin, job_id, lambda j: j["state"] == "queued", "queued again")
        assert queued["message"].startswith(f"its worker ({killed}) stopped answering at ")
        assert stopped_at(queued["message"], killed) >= round(progress, 2)  # or a bit later
        assert queued["message"].endswith(f"running it again, attempt 2 of {MAX_ATTEMPTS}")
        assert queued["worker"] is None and queued["attempts"] == 1

        second = workers.start()  # the task was sent again: a new worker takes it
        job = wait_job(admin, job_id, timeout_s=180)
        assert job["state"] == "succeeded", (job, workers.output())
        assert job["attempts"] == 2 and job["worker"] == workers.name(second)
        assert (
            f"{workers.name(second)}, attempt 2, last heard from at"
            in admin.get(f"/jobs/{job_id}").text
        )  # the job's page in the console
        assert f"attempt 1: its worker ({killed}) stopped answering" in job["log_tail"]
        # The second run kept the clips the first had stored and made the rest, once each.
        assert job["result"]["existing"] > 0
        assert job["result"]["clips"] + job["result"]["existing"] == clips
        with app.state.sessions() as db:
            assert db.scalar(select(func.count()).select_from(Clip)) == clips


def test_a_job_whose_worker_dies_on_every_attempt_fails_saying_so(
    tmp_path: Path, celery_service: tuple[FastAPI, Workers]
) -> None:
    app, workers = celery_service
    with signed_in(app, "ada", "admin") as admin:
        job_id, _ = import_long_recording(admin, tmp_path)
        first, _ = kill_mid_job(admin, job_id, workers, attempt=1)
        wait_until(admin, job_id, lambda j: j["state"] == "queued", "queued again")
        second, progress = kill_mid_job(admin, job_id, workers, attempt=2)  # out of memory again

        job = wait_job(admin, job_id)
        assert job["state"] == "failed" and job["finished_at"] is not None, job
        assert job["message"].startswith(
            f"its worker ({second}) died on every attempt (2 of {MAX_ATTEMPTS}): killed (e.g. "
            "out of memory)"
        )
        assert f"the last time at {stopped_at(job['log_tail'], second):.0%}" in job["message"]
        assert stopped_at(job["log_tail"], second) >= round(progress, 2)
        assert "see the job's log" in job["message"]
        assert f"attempt 1: its worker ({first}) stopped answering" in job["log_tail"]
        assert f"attempt 2: its worker ({second}) stopped answering" in job["log_tail"]
        assert job["attempts"] == 2 and job["worker"] == second


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
