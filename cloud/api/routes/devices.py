"""The fleet: enrolment, groups, token rotation and revocation (admin), and what each device
reports."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from cloud import accounts
from cloud.accounts import NAME_PATTERN
from cloud.api.deps import AdminDep, DbDep, UserDep
from cloud.tables import Device

router = APIRouter(prefix="/devices", tags=["devices"])


class DeviceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    group: str | None = Field(description="Its group, which rollouts can target.")
    created_at: datetime
    revoked_at: datetime | None
    online: bool | None = Field(description="Last retained availability; null if never heard.")
    availability_at: datetime | None
    model_name: str | None
    model_version: str | None
    spool_depth: int | None
    status: dict[str, Any] | None = Field(description="The last status heartbeat.")
    status_at: datetime | None
    last_event_at: datetime | None
    last_event_label: str | None
    last_upload_at: datetime | None = Field(
        description="When the device last uploaded a clip, to the minute (null: never)."
    )
    model_state: dict[str, Any] | None = Field(
        description="The last model/state: installed model and how an update is going."
    )
    model_state_at: datetime | None


# Device ids and group names: what `soundwarden-cloud add-device` accepts.
Name = Annotated[str, Field(pattern=NAME_PATTERN.pattern)]


class NewDevice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, description="The device id it publishes as.")
    group: Name | None = Field(None, description="Its group, which rollouts can target.")


class DeviceChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: Name | None = Field(description="Its group, which rollouts can target; null: none.")


class DeviceToken(BaseModel):
    id: str
    token: str = Field(description="Shown once: only its hash is kept.")


def get_device_or_404(db: DbDep, device_id: str) -> Device:
    device = db.get(Device, device_id)
    if device is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no device {device_id!r}")
    return device


@router.get("")
def list_devices(_: UserDep, db: DbDep) -> list[DeviceOut]:
    return [DeviceOut.model_validate(d) for d in db.scalars(select(Device).order_by(Device.id))]


@router.get("/{device_id}", responses={404: {"description": "No such device"}})
def get_device(device_id: str, _: UserDep, db: DbDep) -> DeviceOut:
    return DeviceOut.model_validate(get_device_or_404(db, device_id))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"description": "Invalid or existing device id"}},
)
def add_device(body: NewDevice, _: AdminDep, db: DbDep) -> DeviceToken:
    try:
        token = accounts.add_device(db, body.id)
    except accounts.AccountError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    get_device_or_404(db, body.id).group = body.group
    db.commit()
    return DeviceToken(id=body.id, token=token)


@router.patch("/{device_id}", responses={404: {"description": "No such device"}})
def change_device(device_id: str, body: DeviceChange, _: AdminDep, db: DbDep) -> DeviceOut:
    """Put the device in a group (rollouts can target one), or in none."""
    device = get_device_or_404(db, device_id)
    device.group = body.group
    db.commit()
    return DeviceOut.model_validate(device)


@router.post("/{device_id}/token", responses={404: {"description": "No such device"}})
def rotate_token(device_id: str, _: AdminDep, db: DbDep) -> DeviceToken:
    """A new token (the old one stops working at once); also un-revokes."""
    get_device_or_404(db, device_id)
    token = accounts.rotate_device_token(db, device_id)
    db.commit()
    return DeviceToken(id=device_id, token=token)


@router.post("/{device_id}/revoke", responses={404: {"description": "No such device"}})
def revoke(device_id: str, _: AdminDep, db: DbDep) -> DeviceOut:
    get_device_or_404(db, device_id)
    device = accounts.revoke_device(db, device_id)
    db.commit()
    return DeviceOut.model_validate(device)
