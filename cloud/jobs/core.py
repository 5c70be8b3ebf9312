"""One job model for all background work: the registry of job kinds, the context a job function
gets, and the life of a `jobs` row from queued to succeeded, failed or cancelled.

Every state change is a conditional UPDATE (`... WHERE state = 'running'`), so the runner and a
cancel request racing each other cannot overwrite one another on SQLite or PostgreSQL, and
whichever process runs the job (a thread of the service, a Celery worker) behaves the same.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session as Db
from sqlalchemy.orm import sessionmaker

from cloud.core.config import Settings
from cloud.core.metrics import JOBS
from cloud.storage import ClipStorage
from cloud.tables import Job, User, utcnow

log = logging.getLogger(__name__)

# Progress is written at most this often: a job scoring thousands of clips would otherwise
# spend more time updating its row than working, and contend with the console for SQLite.
PROGRESS_INTERVAL_S = 0.5
KIND_MAX_LENGTH = 16  # the width of jobs.kind

JobFunction = Callable[["JobContext"], dict[str, Any]]
_REGISTRY: dict[str, JobFunction] = {}


class JobQueueError(RuntimeError):
    """The job could not be handed to its runner (e.g. Redis unreachable); it is failed."""


def job(kind: str) -> Callable[[JobFunction], JobFunction]:
    """Register the function that runs jobs of `kind`. It returns the job's result (JSON) and
    reports through its `JobContext`; raising fails the job with the exception's message."""
    if not 0 < len(kind) <= KIND_MAX_LENGTH:
        raise ValueError(f"job kind {kind!r} must be 1-{KIND_MAX_LENGTH} characters")

    def register(function: JobFunction) -> JobFunction:
        if _REGISTRY.setdefault(kind, function) is not function:
            raise ValueError(f"job kind {kind!r} is registered twice")
        return function

    return register


def kinds() -> list[str]:
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class JobEnv:
    """What a job function may use, the same in the service and in a worker."""

    sessions: sessionmaker[Db]
    storage: ClipStorage
    settings: Settings


@dataclass
class JobContext:
    """Handed to a job function: its parameters, the service's resources, and reporting."""

    job_id: int
    kind: str
    params: dict[str, Any]
    env: JobEnv
    stopping: threading.Event = field(default_factory=threading.Event)
    message: str = ""
    fraction: float = 0.0
    interrupted: bool = False  # cancelled() answered True because the service is stopping
    _lines: list[str] = field(default_factory=list)
    _written_at: float = 0.0

    @property
    def sessions(self) -> sessionmaker[Db]:
        return self.env.sessions

    @property
    def storage(self) -> ClipStorage:
        return self.env.storage

    @property
    def settings(self) -> Settings:
        return self.env.settings

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is (0..1) and what it is doing; written at most every
        PROGRESS_INTERVAL_S."""
        self.fraction = min(1.0, max(0.0, fraction))
        if message is not None:
            self.message = message
        self._flush(force=False)

    def flush(self) -> None:
        """Write the latest progress and log lines now."""
        self._flush(force=True)

    def log(self, line: str) -> None:
        """Add a line to the job's log (shown by GET /api/v1/jobs/{id})."""
        log.info("job %s: %s", self.job_id, line)
        self._lines.append(f"{datetime.now(UTC):%H:%M:%S} {line}\n")
        self._flush(force=False)

    def cancelled(self) -> bool:
        """True when the job should stop at this checkpoint: someone cancelled it, or the
        service is shutting down (the job is then queued again and re-run from the start, so
        job functions must be safe to run twice)."""
        if self.stopping.is_set():
            self.interrupted = True
            return True
        with self.sessions() as db:
            return db.scalar(select(Job.state).where(Job.id == self.job_id)) == "cancelled"

    def take_log(self) -> str:
        """The log lines not written yet (the runner writes them with the final state)."""
        text, self._lines = "".join(self._lines), []
        return text

    def _flush(self, *, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._written_at < PROGRESS_INTERVAL_S:
            return
        self._written_at = now
        lines = self.take_log()
        with self.sessions() as db:
            db.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.state == "running")
                .values(progress=self.fraction, message=self.message)
            )
            if lines:
                db.execute(update(Job).where(Job.id == self.job_id).values(log=Job.log + lines))
            db.commit()


def create_job(db: Db, kind: str, params: dict[str, Any], user: User | None) -> Job:
    """A queued job row (flushed, so it has its id). The caller commits, then submits the id
    to the runner (`app.state.jobs`)."""
    if kind not in _REGISTRY:
        raise ValueError(f"no job kind {kind!r} (known: {', '.join(kinds())})")
    row = Job(
        kind=kind,
        state="queued",
        params=params,
        message="queued",
        created_by=user.id if user else None,
    )
    db.add(row)
    db.flush()
    return row


def fail_unqueued(sessions: sessionmaker[Db], job_id: int, reason: str) -> None:
    """A job its runner never received: failed, saying why."""
    with sessions() as db:
        db.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="failed", message=reason, finished_at=utcnow())
        )
        db.commit()


def request_cancel(db: Db, job_id: int) -> bool:
    """Cancel a job: a queued one at once; a running one stops at its next checkpoint (it
    keeps `finished_at` empty until it has). False when it had finished already."""
    queued = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "queued")
        .values(state="cancelled", message="cancelled before it started", finished_at=utcnow())
    )
    if queued.rowcount == 0:  # type: ignore[attr-defined]
        running = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "running")
            .values(state="cancelled", message="cancelling: it stops at its next checkpoint")
        )
        if running.rowcount == 0:  # type: ignore[attr-defined]
            return False
    db.commit()
    JOBS.labels(kind=db.get_one(Job, job_id).kind, state="cancelled").inc()
    return True


def recover(sessions: sessionmaker[Db]) -> list[int]:
    """After a restart: jobs left running died with the process that ran them (failed, saying
    so); queued ones are returned, oldest first, to be run."""
    with sessions() as db:
        db.execute(
            update(Job)
            .where(Job.state == "running")
            .values(
                state="failed",
                message="interrupted: the service stopped while this job ran (crash or kill); "
                "start it again",
                finished_at=utcnow(),
            )
        )
        db.commit()
        return list(db.scalars(select(Job.id).where(Job.state == "queued").order_by(Job.id)))


def run_job(job_id: int, env: JobEnv, stopping: threading.Event | None = None) -> None:
    """Run one queued job to its end. Never raises: whatever happens is written to the row."""
    try:
        context = _claim(job_id, env, stopping or threading.Event())
        if context is not None:
            _run(context)
    except Exception:
        log.exception("job %s: the runner itself failed", job_id)


def _claim(job_id: int, env: JobEnv, stopping: threading.Event) -> JobContext | None:
    with env.sessions() as db:
        claimed = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="running", started_at=utcnow(), message="started")
        )
        db.commit()
        if claimed.rowcount == 0:  # type: ignore[attr-defined]
            # Cancelled before it started, or a duplicate delivery of a job already running.
            log.info("job %s is not queued any more; nothing to do", job_id)
            return None
        row = db.get_one(Job, job_id)
        return JobContext(job_id, row.kind, dict(row.params), env, stopping, message="started")


def _run(context: JobContext) -> None:
    function = _REGISTRY.get(context.kind)
    try:
        if function is None:
            raise LookupError(
                f"this process cannot run {context.kind!r} jobs (it knows {', '.join(kinds())})"
            )
        result = function(context)
    except Exception as exc:
        context.log(traceback.format_exc().rstrip())
        _finish(context, "failed", str(exc) or type(exc).__name__, None)
        return
    if context.interrupted:
        context.flush()  # the log so far stays with the row that is queued again
        if _requeue(context):
            return
    _finish(context, "succeeded", context.message or "done", result)


def _finish(context: JobContext, state: str, message: str, result: dict[str, Any] | None) -> None:
    lines = context.take_log()
    values: dict[str, Any] = {"finished_at": utcnow(), "result": result, "log": Job.log + lines}
    progress = 1.0 if state == "succeeded" else context.fraction
    with context.sessions() as db:
        done = db.execute(
            update(Job)
            .where(Job.id == context.job_id, Job.state == "running")
            .values(state=state, message=message, progress=progress, **values)
        )
        if done.rowcount == 0:  # type: ignore[attr-defined]
            # Cancelled while it ran: it stays cancelled, and says how far it had got.
            state = "cancelled"
            db.execute(
                update(Job)
                .where(Job.id == context.job_id, Job.state == "cancelled")
                .values(message=f"cancelled at {context.fraction:.0%}: {message}", **values)
            )
        db.commit()
    if state != "cancelled":  # a cancel is counted when it is asked for
        JOBS.labels(kind=context.kind, state=state).inc()
    log.info("job %s (%s) %s: %s", context.job_id, context.kind, state, message)


def _requeue(context: JobContext) -> bool:
    """The service is stopping: the job goes back to the queue for the next start (False when
    it was cancelled meanwhile, and so is not to run again)."""
    with context.sessions() as db:
        requeued = db.execute(
            update(Job)
            .where(Job.id == context.job_id, Job.state == "running")
            .values(
                state="queued",
                progress=0.0,
                started_at=None,
                message="interrupted by a service shutdown; it runs again at the next start",
            )
        )
        db.commit()
    return bool(requeued.rowcount)  # type: ignore[attr-defined]
