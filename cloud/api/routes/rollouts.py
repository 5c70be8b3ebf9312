"""Rollouts: follow them, pause, resume and abort them. One starts by promoting a model
(`POST /api/v1/models/{name}/{version}/promote`, in routes/registry.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Self

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session as Db

from cloud import rollout
from cloud.api.deps import AdminDep, DbDep, SettingsDep, UserDep
from cloud.api.routes.devices import Name
from cloud.tables import MemberState, Rollout, RolloutDevice, RolloutState
from models.contract import UpdateState

router = APIRouter(prefix="/rollouts", tags=["rollouts"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such rollout"}}
_CHANGE: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"description": "Not in a state that allows it"},
}
# rollouts.id is a 32-bit integer on PostgreSQL: a larger id would fail inside the driver.
RolloutId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The rollout's id.")]


class RolloutRequest(BaseModel):
    """Who gets the model, and in which stages. No group and no devices: the whole fleet."""

    model_config = ConfigDict(extra="forbid")

    group: Name | None = Field(None, description="Only the devices of this group.")
    devices: list[Name] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="Only these devices, in this order: the first stages take the first ones.",
    )
    stages: list[Annotated[str, Field(pattern=rollout.STAGE_PATTERN)]] = Field(
        default_factory=lambda: list(rollout.DEFAULT_STAGES),
        min_length=1,
        max_length=10,
        description='Cumulative stage sizes: a device count ("1": one canary) or a share of '
        'the devices ("10%", rounded up); the last must reach every device ("100%"). A '
        "stage starts once every device of the stages before it runs the new model.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if self.group is not None and self.devices is not None:
            raise ValueError("give a group or a list of devices, not both")
        return self


class RolloutOut(BaseModel):
    id: int = Field(description="Echoed by devices in their model/state as `rollout`.")
    model_name: str
    version: str
    sha256: str = Field(description="SHA-256 of the .tar.gz the devices download.")
    url: str = Field(description="Where the devices download it (with their token).")
    group: str | None = Field(description="The device group it targets; null: not a group.")
    stages: list[str] = Field(description="The stage sizes asked for.")
    stage: int | None = Field(description="Index of the latest stage notified.")
    state: RolloutState = Field(
        description="running; paused (by an admin, or a device that failed: see `reason`); "
        "completed (every device healthy or failed and skipped); aborted."
    )
    reason: str = Field(description="Why it is paused or aborted.")
    devices: dict[MemberState, int] = Field(description="How many of its devices are where.")
    created_by: int | None = Field(description="The admin who promoted the model.")
    created_at: datetime
    updated_at: datetime = Field(description="Its latest change or device report.")
    finished_at: datetime | None


class RolloutDeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    device_id: str
    stage: int = Field(description="Index of its stage in `stages`.")
    state: MemberState = Field(
        description="waiting (its stage has not started); notified (told, not yet healthy); "
        "healthy (runs the new model, probation passed); failed (rejected it or rolled it "
        "back: skipped once the rollout is resumed)."
    )
    previous_version: str | None = Field(
        description="The version it ran when notified: what an abort sends it back to."
    )
    notified_at: datetime | None = Field(description="When its model/set went to the broker.")
    pending: bool = Field(False, description="A model/set for it waits to be published.")
    update_state: UpdateState | None = Field(
        description="Its latest model/state about this rollout: the update step it is at."
    )
    progress: float | None = Field(description="Progress of that step, 0 to 1.")
    error: str | None = Field(description="Why it rejected or rolled back the model, or failed.")
    reported_at: datetime | None


class RolloutDetail(RolloutOut):
    members: list[RolloutDeviceOut] = Field(description="Its devices, stage by stage.")


def summaries(db: Db, rows: Sequence[Rollout]) -> list[RolloutOut]:
    """`rows` as the API shows them, with their devices counted by state (one query)."""
    counts: dict[int, dict[str, int]] = {row.id: {} for row in rows}
    for rollout_id, state, n in db.execute(
        select(RolloutDevice.rollout_id, RolloutDevice.state, func.count())
        .where(RolloutDevice.rollout_id.in_(counts))
        .group_by(RolloutDevice.rollout_id, RolloutDevice.state)
    ):
        counts[rollout_id][state] = n
    return [
        RolloutOut(
            id=row.id,
            model_name=row.model_name,
            version=row.version,
            sha256=row.sha256,
            url=rollout.bundle_url(row.base_url, row.model_name, row.version),
            group=row.group,
            stages=row.stages,
            stage=row.stage if row.stage >= 0 else None,
            state=row.state,
            reason=row.reason,
            devices=counts[row.id],
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
        )
        for row in rows
    ]


def detail(db: Db, row: Rollout) -> RolloutDetail:
    """`row` with each of its devices."""
    members = db.scalars(
        select(RolloutDevice)
        .where(RolloutDevice.rollout_id == row.id)
        .order_by(RolloutDevice.stage, RolloutDevice.device_id)
    )
    return RolloutDetail(
        **summaries(db, [row])[0].model_dump(),
        members=[
            RolloutDeviceOut.model_validate(m).model_copy(update={"pending": m.outbox is not None})
            for m in members
        ],
    )


def http_error(exc: rollout.RolloutError) -> HTTPException:
    """No such rollout: 404; not in a state that allows it: 409; a bad request: 400."""
    if isinstance(exc, rollout.RolloutNotFoundError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, rollout.RolloutConflictError):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    return HTTPException(status.HTTP_400_BAD_REQUEST, str(exc))


def _change(db: Db, action: Callable[[], Rollout]) -> RolloutDetail:
    try:
        row = action()
    except rollout.RolloutError as exc:
        raise http_error(exc) from None
    db.commit()
    return detail(db, row)


@router.get("")
def list_rollouts(
    _: UserDep,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[RolloutOut]:
    """Newest first."""
    rows = db.scalars(select(Rollout).order_by(Rollout.id.desc()).offset(offset).limit(limit))
    return summaries(db, rows.all())


@router.get("/{rollout_id}", responses=_NOT_FOUND)
def get_rollout(rollout_id: RolloutId, _: UserDep, db: DbDep) -> RolloutDetail:
    row = db.get(Rollout, rollout_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}")
    return detail(db, row)


@router.post("/{rollout_id}/pause", responses=_CHANGE)
def pause(rollout_id: RolloutId, user: AdminDep, db: DbDep) -> RolloutDetail:
    """Start no further stage; devices already told carry on."""
    return _change(db, lambda: rollout.pause(db, rollout_id, user.username))


@router.post("/{rollout_id}/resume", responses=_CHANGE)
def resume(rollout_id: RolloutId, _: AdminDep, db: DbDep) -> RolloutDetail:
    """Go on without the devices that failed (they stay failed)."""
    return _change(db, lambda: rollout.resume(db, rollout_id))


@router.post("/{rollout_id}/abort", responses=_CHANGE)
def abort(rollout_id: RolloutId, user: AdminDep, db: DbDep, settings: SettingsDep) -> RolloutDetail:
    """Stop. Devices already told are sent the version they ran before (or, where the
    registry lacks it, their model/set is cleared); devices never told are left alone."""
    return _change(db, lambda: rollout.abort(db, settings, rollout_id, user.username))
