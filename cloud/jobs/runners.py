"""Who runs the jobs, chosen once from `settings.jobs`: threads inside the service, or Celery
workers (`soundwarden-cloud worker`) fed through Redis. Routes only ever call `submit`."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sqlalchemy.orm import Session as Db
from sqlalchemy.orm import sessionmaker

from cloud.core.config import Settings
from cloud.jobs.core import JobEnv, JobQueueError, fail_unqueued, recover, run_job
from cloud.storage import ClipStorage

log = logging.getLogger(__name__)
TASK_NAME = "soundwarden.run_job"


class JobRunner(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, job_id: int) -> None:
        """Hand over a committed, queued job; JobQueueError (the job is then failed) when the
        runner cannot take it."""


class EmbeddedRunner:
    """A thread pool in the service process: the one-machine default.

    Only one service process may use a database this way: on start it takes every job left
    `running` as abandoned by a crash. On stop, running jobs are interrupted at their next
    checkpoint and queued again; start runs whatever is queued. start/stop nest (the app may be
    entered more than once, as tests do with several clients): only the outermost pair acts.
    """

    def __init__(self, env: JobEnv, workers: int) -> None:
        self._env = env
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._entered = 0

    def start(self) -> None:
        with self._lock:
            self._entered += 1
            if self._entered > 1:
                return
            self._stopping = threading.Event()
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="soundwarden-job")
        queued = recover(self._env.sessions)
        if queued:
            log.info("running %d job(s) queued before the start: %s", len(queued), queued)
        for job_id in queued:
            self.submit(job_id)

    def stop(self) -> None:
        with self._lock:
            self._entered -= 1
            if self._entered > 0 or self._pool is None:
                return
            pool, self._pool = self._pool, None
        self._stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, job_id: int) -> None:
        with self._lock:
            # Not started (or stopped): the job stays queued and the next start runs it.
            if self._pool is not None:
                self._pool.submit(run_job, job_id, self._env, self._stopping)


class CeleryRunner:
    """Sends each job to the Celery workers as one `soundwarden.run_job(job_id)` task; the
    workers share this service's database and storage and report through the jobs table."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Db]) -> None:
        from cloud.jobs.celery_app import make_celery

        self._celery: Any = make_celery(settings)
        self._sessions = sessions

    def start(self) -> None:
        """Nothing to start: the workers are their own processes."""

    def stop(self) -> None:
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
