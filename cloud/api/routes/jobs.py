"""Background jobs: list, inspect, cancel, and start model assistance and training.

Kinds with their own start endpoint: `import` (routes/imports.py), `assist` and `train` (here):
validate the request, `create_job`, then `queue`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session as Db

from cloud import registry
from cloud.api.deps import AdminDep, DbDep, SettingsDep, UserDep
from cloud.jobs import JobQueueError, JobRunner, create_job, request_cancel
from cloud.jobs.assist import AssistParams, resolve_bundle
from cloud.jobs.train import TrainParams, run_dir
from cloud.tables import Job, JobState

router = APIRouter(prefix="/jobs", tags=["jobs"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such job"}}


def get_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.jobs
    return runner


JobsDep = Annotated[JobRunner, Depends(get_runner)]
# jobs.id is a 32-bit integer on PostgreSQL: a larger id fails inside the driver (and past 2**63
# on SQLite), a 500 where "no such job" is the answer.
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The job's id.")]


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str = Field(description="import, assist, train...")
    state: JobState
    progress: float = Field(description="0..1")
    message: str = Field(description="What it is doing; for a failed job, why it failed.")
    params: dict[str, Any]
    result: dict[str, Any] | None = Field(description="What it produced, once it has ended.")
    created_by: int | None = Field(description="The user who started it.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None = Field(
        description="Empty while it runs; a cancelled job that is still stopping has none yet."
    )
    worker: str | None = Field(
        description="hostname:pid of the process running it (for an ended job, the last one); "
        "its log says more when a job fails."
    )
    attempts: int = Field(
        description="Runs started (one a shutdown interrupted not counted); a job whose worker "
        "dies is run once more."
    )
    heartbeat_at: datetime | None = Field(
        description="When its worker last said it was alive; an old one (over job_lease_s) "
        "means the worker died and the job is run again or failed."
    )


class JobDetail(JobOut):
    log_tail: str = Field(description="The last lines of the job's log.")


def queue(db: Db, runner: JobRunner, row: Job) -> JobOut:
    """Commit a new job and hand it to the runner (503 when the queue cannot take it)."""
    db.commit()
    queued = JobOut.model_validate(row)  # as committed: a fast runner may have started it
    try:
        runner.submit(row.id)
    except JobQueueError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return queued


def log_tail(log: str, lines: int) -> str:
    """The last `lines` lines of a job's log (the console's job page shows the same)."""
    return "".join(log.splitlines(keepends=True)[-lines:]) if lines else ""


def _get(db: Db, job_id: int) -> Job:
    row = db.get(Job, job_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return row


@router.get("")
def list_jobs(
    _: UserDep,
    db: DbDep,
    kind: str | None = None,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobOut]:
    """Jobs, newest first."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if state is not None:
        query = query.where(Job.state == state)
    return [JobOut.model_validate(row) for row in db.scalars(query)]


@router.get("/{job_id}", responses=_NOT_FOUND)
def get_job(
    job_id: JobId,
    _: UserDep,
    db: DbDep,
    log_lines: Annotated[int, Query(ge=0, le=10_000)] = 100,
) -> JobDetail:
    row = _get(db, job_id)
    return JobDetail(
        **JobOut.model_validate(row).model_dump(), log_tail=log_tail(row.log, log_lines)
    )


@router.post(
    "/{job_id}/cancel",
    responses={
        **_NOT_FOUND,
        403: {"description": "Neither its creator nor an admin"},
        409: {"description": "The job has ended already"},
    },
)
def cancel_job(job_id: JobId, user: UserDep, db: DbDep) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next checkpoint (its
    `finished_at` is set when it has). Admins cancel any job, others their own."""
    row = _get(db, job_id)
    if user.role != "admin" and row.created_by != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "only its creator or an admin can cancel it")
    if not request_cancel(db, job_id):
        db.refresh(row)
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has ended ({row.state})")
    db.refresh(row)
    return JobOut.model_validate(row)


@router.post(
    "/assist",
    status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "No such model"}, 503: {"description": "Queue unreachable"}},
)
def start_assist(body: AssistParams, user: UserDep, db: DbDep, jobs: JobsDep) -> JobOut:
    """Score clips with a model: suggestions, per-window scores and uncertainty per clip."""
    try:
        resolve_bundle(db, body.model, body.version)
    except registry.RegistryError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return queue(db, jobs, create_job(db, "assist", body.model_dump(), user))


@router.post(
    "/train",
    status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "Queue unreachable"}},
)
def start_training(body: TrainParams, user: AdminDep, db: DbDep, jobs: JobsDep) -> JobOut:
    """Retrain from the labelled clips. The job registers a signed bundle and compares it
    with the deployed version on the same held-out test clips (see its `result`)."""
    return queue(db, jobs, create_job(db, "train", body.model_dump(), user))


@router.get(
    "/{job_id}/plots/{name}",
    response_class=FileResponse,
    responses={404: {"description": "No such job or plot"}, 200: {"content": {"image/png": {}}}},
)
def job_plot(
    job_id: JobId, name: str, _: UserDep, db: DbDep, settings: SettingsDep
) -> FileResponse:
    """A plot a training job drew (training curves, confusion matrix, ROC/PR curves)."""
    row = _get(db, job_id)
    if name not in (row.result or {}).get("plots", []):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no plot {name!r}")
    return FileResponse(run_dir(settings, job_id) / name, media_type="image/png")
