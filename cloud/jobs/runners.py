"""Who runs the jobs, chosen once from `settings.jobs`: threads inside the service, or Celery
workers (`soundwarden-cloud worker`) fed through Redis. Routes only ever call `submit`.

Either runner, once started, reaps every `job_lease_s / 2`: a job whose process died (its lease
ran out, see cloud/jobs/core.py) is queued again and submitted to this runner, or failed after
its last attempt. Any number of service processes may share a database: the reaping is
race-safe, and each only ever takes jobs whose heartbeat has stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy.orm import Session as Db
from sqlalchemy.orm import sessionmaker

from cloud.core.config import Settings
from cloud.jobs.core import (
    JobEnv,
    JobQueueError,
    fail_unqueued,
    reap_abandoned,
    recover,
    run_job,
)
from cloud.storage import ClipStorage

log = logging.getLogger(__name__)
TASK_NAME = "soundwarden.run_job"


class JobRunner(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, job_id: int) -> None:
        """Hand over a committed, queued job; JobQueueError (the job is then failed) when the
        runner cannot take it."""


class Reaper:
    """A daemon thread that, every half lease, queues again (and submits) or fails the jobs
    whose process stopped answering (`reap_abandoned`). start/stop nest like the app."""

    def __init__(
        self, sessions: sessionmaker[Db], lease_s: float, submit: Callable[[int], None]
    ) -> None:
        self._sessions = sessions
        self._lease_s = lease_s
        self._submit = submit
        self._lock = threading.Lock()
        self._entered = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            self._entered += 1
            if self._entered > 1:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="soundwarden-reaper", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._entered -= 1
            if self._entered > 0 or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._stop.set()
        thread.join()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self._lease_s / 2):
            try:
                requeued = reap_abandoned(self._sessions, self._lease_s)
            except Exception:  # the database is down: the next round tries again
                log.warning("could not look for abandoned jobs", exc_info=True)
                continue
            for job_id in requeued:
                try:
                    self._submit(job_id)
                except JobQueueError:  # failed, saying why, by the runner
                    log.warning("job %s was queued again but cannot be sent", job_id)


class EmbeddedRunner:
    """A thread pool in the service process: the one-machine default.

    On stop, running jobs are interrupted at their next checkpoint and queued again; start runs
    whatever is queued, including jobs a dead process left running once their lease has run
    out (the reaper takes those that run out later). Jobs another live process runs on the same
    database (`serve --workers N`, a second service) keep their heartbeat and are left alone.
    start/stop nest (the app may be entered more than once, as tests do with several clients):
    only the outermost pair acts.
    """

    def __init__(self, env: JobEnv, workers: int) -> None:
        self._env = env
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._entered = 0
        self._reaper = Reaper(env.sessions, env.settings.job_lease_s, self.submit)

    def start(self) -> None:
        with self._lock:
            self._entered += 1
            if self._entered > 1:
                return
            self._stopping = threading.Event()
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="soundwarden-job")
        queued = recover(self._env.sessions, self._env.settings.job_lease_s)
        if queued:
            log.info("running %d job(s) queued before the start: %s", len(queued), queued)
        for job_id in queued:
            self.submit(job_id)
        self._reaper.start()

    def stop(self) -> None:
        with self._lock:
            self._entered -= 1
            if self._entered > 0 or self._pool is None:
                return
            pool, self._pool = self._pool, None
        self._reaper.stop()
        self._stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, job_id: int) -> None:
        with self._lock:
            # Not started (or stopped): the job stays queued and the next start runs it.
            if self._pool is not None:
                self._pool.submit(run_job, job_id, self._env, self._stopping)


class CeleryRunner:
    """Sends each job to the Celery workers as one `soundwarden.run_job(job_id)` task; the
    workers share this service's database and storage and report through the jobs table.

    The workers are their own processes; the service reaps for them: a job whose worker died
    (its heartbeat stopped) is sent again, instead of waiting for Redis to redeliver the task
    an hour later."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Db]) -> None:
        from cloud.jobs.celery_app import make_celery

        self._celery: Any = make_celery(settings)
        self._sessions = sessions
        self._reaper = Reaper(sessions, settings.job_lease_s, self.submit)

    def start(self) -> None:
        self._reaper.start()

    def stop(self) -> None:
        self._reaper.stop()
        self._celery.close()

    def submit(self, job_id: int) -> None:
        try:
            self._celery.send_task(TASK_NAME, args=[job_id])
        except Exception as exc:  # kombu raises its own OperationalError and plain OSErrors
            # Not the URL itself: it may carry the Redis password.
            reason = f"could not queue the job: the Celery broker (redis_url) fails: {exc}"
            fail_unqueued(self._sessions, job_id, reason)
            raise JobQueueError(reason) from exc


def make_runner(settings: Settings, sessions: sessionmaker[Db], storage: ClipStorage) -> JobRunner:
    if settings.jobs == "celery":
        return CeleryRunner(settings, sessions)
    return EmbeddedRunner(JobEnv(sessions, storage, settings), settings.embedded_workers)
