"""User accounts (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from cloud import accounts
from cloud.api.deps import AdminDep, DbDep
from cloud.tables import User

router = APIRouter(prefix="/users", tags=["users"])


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    username: str
    role: str
    disabled: bool
    created_at: datetime


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    role: Literal["admin", "labeller"]


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "labeller"] | None = None
    disabled: bool | None = None
    password: str | None = Field(None, min_length=1, max_length=1024)


@router.get("")
def list_users(_: AdminDep, db: DbDep) -> list[UserOut]:
    users = db.scalars(select(User).order_by(User.username)).all()
    return [UserOut.model_validate(user) for user in users]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"description": "Invalid or existing user"}},
)
def create_user(body: NewUser, _: AdminDep, db: DbDep) -> UserOut:
    try:
        user = accounts.create_user(db, body.username, body.password, body.role)
    except accounts.AccountError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    db.commit()
    return UserOut.model_validate(user)


@router.patch("/{username}", responses={404: {"description": "No such user"}})
def change_user(username: str, body: UserChange, admin: AdminDep, db: DbDep) -> UserOut:
    user = db.scalar(select(User).where(User.username == username))
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {username!r}")
    if user.id == admin.id and (body.disabled or body.role == "labeller"):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "you cannot disable yourself or drop your own admin role"
        )
    if body.role is not None:
        user.role = body.role
    if body.disabled is not None:
        user.disabled = body.disabled
    if body.password is not None:
        try:
            accounts.set_password(user, body.password)
        except accounts.AccountError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    db.commit()
    return UserOut.model_validate(user)
