"""Events the fleet published (recorded by the MQTT bridge), newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from cloud.api.deps import DbDep, UserDep
from cloud.api.routes.devices import get_device_or_404 as get_device
from cloud.tables import Event

router = APIRouter(tags=["events"])

# Far past any page a person asks for, and within what both databases take for OFFSET (a larger
# number fails inside the driver: a 500, not a 422).
MAX_OFFSET = 2**31 - 1
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Events to skip (the page start).")]


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: str
    episode_id: str = Field(description="Shared by an episode's start, updates and end.")
    type: str = Field(description="start, update or end.")
    label: str
    score: float
    at: datetime = Field(description="The episode's end for `end`, else its start (UTC).")
    clip_id: str | None
    payload: dict[str, Any] = Field(description="The message as the device published it.")


def events_page(
    db: DbDep,
    limit: int,
    offset: int,
    device: str | None = None,
    label: str | None = None,
    since: datetime | None = None,
) -> list[EventOut]:
    query = select(Event)
    if device is not None:
        query = query.where(Event.device_id == device)
    if label is not None:
        query = query.where(Event.label == label)
    if since is not None:
        query = query.where(Event.at >= since)
    # An episode's steps can share `at` (updates carry its start): arrival order breaks ties.
    query = query.order_by(Event.at.desc(), Event.id.desc()).limit(limit).offset(offset)
    return [EventOut.model_validate(e) for e in db.scalars(query)]


@router.get("/events")
def list_events(
    _: UserDep,
    db: DbDep,
    device: str | None = None,
    label: str | None = None,
    since: Annotated[AwareDatetime | None, Query(description="Only events at or after.")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[EventOut]:
    """All devices' events, enrolled or not, newest first."""
    return events_page(db, limit, offset, device=device, label=label, since=since)


@router.get("/devices/{device_id}/events", responses={404: {"description": "No such device"}})
def device_events(
    device_id: str, _: UserDep, db: DbDep, limit: Limit = 50, offset: Offset = 0
) -> list[EventOut]:
    """One enrolled device's events, newest first."""
    get_device(db, device_id)
    return events_page(db, limit, offset, device=device_id)
