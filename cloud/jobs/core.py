"""One job model for all background work: the registry of job kinds, the context a job function
gets, and the life of a `jobs` row from queued to succeeded, failed or cancelled.

Every state change is a conditional UPDATE (`... WHERE state = 'running'`), so the runner and a
cancel request racing each other cannot overwrite one another on SQLite or PostgreSQL, and
whichever process runs the job (a thread of the service, a Celery worker) behaves the same.

A running job is leased: claiming it writes the process that holds it (`worker`,
"hostname:pid"), counts the attempt and stamps `heartbeat_at`, and while it runs one heartbeat
thread per process stamps it again every `job_lease_s / 4`, whether or not the job function
reports. A job whose heartbeat is older than `job_lease_s` lost its process (killed, out of
memory, machine gone): `reap_abandoned`, which the runners call every `job_lease_s / 2`, queues
it again, or fails it once MAX_ATTEMPTS runs have died. Each write of a run is also conditional on
its attempt, so a process that stalled past its lease and comes back cannot overwrite the run
that replaced it: it finds the job taken and stops at its next checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update
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
# Runs of one job that may die (their worker killed, out of memory...) before it is failed: a
# job that kills its worker every time would otherwise take one down per lease, for ever.
MAX_ATTEMPTS = 2

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
    attempt: int = 1  # jobs.attempts as this run claimed it: every write is conditional on it
    lost: bool = False  # cancelled() answered True because another run has taken the job over
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
        job functions must be safe to run twice), or this run lost its lease and another one
        has the job."""
        if self.stopping.is_set():
            self.interrupted = True
            return True
        with self.sessions() as db:
            row = db.execute(
                select(Job.state, Job.attempts).where(Job.id == self.job_id)
            ).one_or_none()
        if row is None or row.attempts != self.attempt or row.state not in ("running", "cancelled"):
            self.lost = True
            return True
        return bool(row.state == "cancelled")

    def mine(self) -> ColumnElement[bool]:
        """The WHERE of every write of this run: its job, as long as no other run claimed it."""
        return and_(Job.id == self.job_id, Job.attempts == self.attempt)

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
                .where(self.mine(), Job.state == "running")
                .values(progress=self.fraction, message=self.message)
            )
            if lines:
                db.execute(update(Job).where(self.mine()).values(log=Job.log + lines))
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


def recover(sessions: sessionmaker[Db], lease_s: float) -> list[int]:
    """At a start: jobs a dead process left running are queued again or failed once their lease
    has run out (`reap_abandoned`; a job another live process runs keeps its heartbeat fresh and
    is left alone); the queued ones are returned, oldest first, to be run."""
    reap_abandoned(sessions, lease_s)
    with sessions() as db:
        return list(db.scalars(select(Job.id).where(Job.state == "queued").order_by(Job.id)))


def reap_abandoned(sessions: sessionmaker[Db], lease_s: float) -> list[int]:
    """Jobs whose process stopped answering (no heartbeat for `lease_s`): queued again while
    they have attempts left, failed once MAX_ATTEMPTS runs have died; a cancelled one that had
    not stopped yet is ended. Returns the ids queued again, for the caller to submit."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    # A job claimed before heartbeats existed (migration 0003) counts from its start.
    heard_at = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)
    abandoned = (Job.state.in_(("running", "cancelled")), Job.finished_at.is_(None))
    requeued: list[int] = []
    with sessions() as db:
        rows = db.execute(
            select(Job.id, Job.kind, Job.state, Job.worker, Job.attempts, Job.progress, heard_at)
            .where(*abandoned, heard_at < cutoff)
            .order_by(Job.id)
        ).all()
        for job_id, kind, state, worker, attempts, progress, heard in rows:
            # The same conditions again: a heartbeat, a cancel or another reaper in between wins.
            still = (
                Job.id == job_id,
                Job.state == state,
                Job.attempts == attempts,
                heard_at < cutoff,
            )
            who = f"its worker ({worker})" if worker else "its worker"
            died = (
                f"{who} stopped answering at {progress:.0%} (killed, crashed or cut off; "
                f"last heard from at {heard:%H:%M:%S} UTC)"
            )
            line = f"{datetime.now(UTC):%H:%M:%S} attempt {attempts}: {died}\n"
            ended: dict[str, Any] = {"finished_at": utcnow(), "log": Job.log + line}
            if state == "cancelled":
                values = {"message": f"cancelled at {progress:.0%}: {died}", **ended}
            elif attempts < MAX_ATTEMPTS:
                values = {
                    "state": "queued",
                    "message": f"{died}; running it again, attempt {attempts + 1} of "
                    f"{MAX_ATTEMPTS}",
                    "progress": 0.0,
                    "started_at": None,
                    "worker": None,
                    "heartbeat_at": None,
                    "log": Job.log + line,
                }
            else:
                values = {
                    "state": "failed",
                    "message": f"{who} died on every attempt ({attempts} of {MAX_ATTEMPTS}): "
                    "killed (e.g. out of memory), crashed or cut off, the last time at "
                    f"{progress:.0%}; see the job's log, and the worker's own, before starting "
                    "it again",
                    **ended,
                }
            reaped = db.execute(update(Job).where(*still).values(**values))
            if reaped.rowcount == 0:  # type: ignore[attr-defined]
                continue
            db.commit()
            log.warning("job %s (%s): %s", job_id, kind, values["message"])
            if values.get("state") == "queued":
                requeued.append(job_id)
            elif values.get("state") == "failed":
                JOBS.labels(kind=kind, state="failed").inc()
        db.commit()
    return requeued


def worker_name() -> str:
    """This process as `jobs.worker` names it ("hostname:pid"): where to look for its log. Asked
    each time: a child of Celery's prefork pool is not the process that imported this."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _Heartbeat:
    """The one thread of a process that keeps the leases of the jobs it runs: every quarter
    lease it stamps their `heartbeat_at`, whatever the job functions are doing (an epoch may
    take minutes without a checkpoint). It starts with the first job and ends after the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], JobEnv] = {}  # (job id, attempt): where the row is
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()  # a job came: its lease may be shorter than the others'

    def hold(self, context: JobContext) -> None:
        with self._lock:
            self._held[context.job_id, context.attempt] = context.env
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._beat, name="soundwarden-heartbeat", daemon=True
                )
                self._thread.start()

    def release(self, context: JobContext) -> None:
        with self._lock:
            self._held.pop((context.job_id, context.attempt), None)

    def _beat(self) -> None:
        beaten_at = time.monotonic()  # every job held was stamped when it was claimed
        while True:
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
                interval = min(env.settings.job_lease_s for env in self._held.values()) / 4
                held = list(self._held.items())
                self._wake.clear()
            wait = beaten_at + interval - time.monotonic()
            if wait > 0 and self._wake.wait(wait):
                continue  # work out the interval again
            beaten_at = time.monotonic()
            # One UPDATE per database (tests run several apps in one process).
            by_sessions: dict[sessionmaker[Db], list[int]] = {}
            for (job_id, _), env in held:
                by_sessions.setdefault(env.sessions, []).append(job_id)
            for sessions, job_ids in by_sessions.items():
                self._stamp(sessions, job_ids)

    @staticmethod
    def _stamp(sessions: sessionmaker[Db], job_ids: list[int]) -> None:
        try:
            with sessions() as db:
                db.execute(
                    update(Job)
                    .where(
                        Job.id.in_(job_ids),
                        Job.worker == worker_name(),
                        Job.state.in_(("running", "cancelled")),  # cancelled: still stopping
                        Job.finished_at.is_(None),
                    )
                    .values(heartbeat_at=utcnow())
                )
                db.commit()
        except Exception:
            # A database hiccup: the lease outlasts three more tries.
            log.warning("heartbeat of job(s) %s not written", job_ids, exc_info=True)


_heartbeat = _Heartbeat()


def _forget_parent_heartbeat() -> None:
    global _heartbeat
    _heartbeat = _Heartbeat()


# A forked child (Celery's prefork pool) has none of its parent's threads: it starts its own.
os.register_at_fork(after_in_child=_forget_parent_heartbeat)


def run_job(job_id: int, env: JobEnv, stopping: threading.Event | None = None) -> None:
    """Run one queued job to its end. Never raises: whatever happens is written to the row."""
    try:
        context = _claim(job_id, env, stopping or threading.Event())
        if context is None:
            return
        _heartbeat.hold(context)
        try:
            _run(context)
        finally:
            _heartbeat.release(context)
    except Exception:
        log.exception("job %s: the runner itself failed", job_id)


def _claim(job_id: int, env: JobEnv, stopping: threading.Event) -> JobContext | None:
    with env.sessions() as db:
        now = utcnow()
        claimed = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(
                state="running",
                started_at=now,
                message="started",
                worker=worker_name(),
                heartbeat_at=now,
                attempts=Job.attempts + 1,
            )
        )
        db.commit()
        if claimed.rowcount == 0:  # type: ignore[attr-defined]
            # Cancelled before it started, or a duplicate delivery of a job already running.
            log.info("job %s is not queued any more; nothing to do", job_id)
            return None
        row = db.get_one(Job, job_id)
        return JobContext(
            job_id,
            row.kind,
            dict(row.params),
            env,
            stopping,
            message="started",
            attempt=row.attempts,
        )


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
    written: str | None = state
    with context.sessions() as db:
        done = db.execute(
            update(Job)
            .where(context.mine(), Job.state == "running")
            .values(state=state, message=message, progress=progress, **values)
        )
        if done.rowcount == 0:  # type: ignore[attr-defined]
            # Cancelled while it ran: it stays cancelled, and says how far it had got.
            stopped = db.execute(
                update(Job)
                .where(context.mine(), Job.state == "cancelled", Job.finished_at.is_(None))
                .values(message=f"cancelled at {context.fraction:.0%}: {message}", **values)
            )
            # Neither: this run stalled past its lease, and the job was reaped meanwhile.
            written = "cancelled" if stopped.rowcount else None  # type: ignore[attr-defined]
        db.commit()
    if written is None:
        log.warning(
            "job %s: attempt %d ended (%s: %s) after it had lost its lease; not written",
            context.job_id,
            context.attempt,
            state,
            message,
        )
        return
    if written != "cancelled":  # a cancel is counted when it is asked for
        JOBS.labels(kind=context.kind, state=written).inc()
    log.info("job %s (%s) %s: %s", context.job_id, context.kind, written, message)


def _requeue(context: JobContext) -> bool:
    """The service is stopping: the job goes back to the queue for the next start (False when
    it was cancelled meanwhile, and so is not to run again). A run a shutdown interrupted does
    not count as one of its attempts."""
    with context.sessions() as db:
        requeued = db.execute(
            update(Job)
            .where(context.mine(), Job.state == "running")
            .values(
                state="queued",
                progress=0.0,
                started_at=None,
                worker=None,
                heartbeat_at=None,
                attempts=Job.attempts - 1,
                message="interrupted by a service shutdown; it runs again at the next start",
            )
        )
        db.commit()
    return bool(requeued.rowcount)  # type: ignore[attr-defined]
