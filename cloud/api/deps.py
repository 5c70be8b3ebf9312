"""Typed dependencies: the database session, the signed-in user, the calling device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session as Db

from cloud import accounts
from cloud.core.config import Settings
from cloud.core.security import same
from cloud.storage import ClipStorage
from cloud.tables import Device, Session, User

SESSION_COOKIE = "soundwarden_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def refused_value(exc: DataError) -> HTTPException:
    """A value the database cannot take, wherever in the request it came from: text with a NUL
    character (PostgreSQL's text cannot hold one; SQLite's can). The request is at fault, not
    the service: a 422, not a 500."""
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        f"a value in the request cannot be stored or looked up: {exc.orig}",
    )


def get_db(request: Request) -> Iterator[Db]:
    with request.app.state.sessions() as db:
        try:
            yield db
        except DataError as exc:
            raise refused_value(exc) from None


def get_storage(request: Request) -> ClipStorage:
    storage: ClipStorage = request.app.state.storage
    return storage


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Db, Depends(get_db)]
StorageDep = Annotated[ClipStorage, Depends(get_storage)]


@dataclass(frozen=True)
class Login:
    user: User
    session: Session


def _not_signed_in() -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in first (POST /api/v1/auth/login)")


def current_login(request: Request, db: DbDep) -> Login:
    """The session cookie's user. State-changing requests must also echo the session's CSRF
    token in `X-CSRF-Token` (or a form's `csrf_token` field, checked by the page itself): a
    page on another site can make the browser send the cookie, but cannot read the token."""
    token = request.cookies.get(SESSION_COOKIE)
    found = accounts.find_session(db, token) if token else None
    if found is None:
        raise _not_signed_in()
    session, user = found
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not same(sent, session.csrf_token):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"missing or wrong {CSRF_HEADER}")
    return Login(user, session)


LoginDep = Annotated[Login, Depends(current_login)]


def current_user(login: LoginDep) -> User:
    return login.user


def admin_user(login: LoginDep) -> User:
    if login.user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs the admin role")
    return login.user


UserDep = Annotated[User, Depends(current_user)]
AdminDep = Annotated[User, Depends(admin_user)]


def current_device(db: DbDep, authorization: Annotated[str | None, Header()] = None) -> Device:
    """The device whose token is in `Authorization: Bearer <token>`."""
    scheme, _, token = (authorization or "").partition(" ")
    device = accounts.device_for_token(db, token.strip()) if scheme.lower() == "bearer" else None
    if device is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid device token is needed (Authorization: Bearer <token>); "
            "enrol with `soundwarden-cloud add-device`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return device


DeviceDep = Annotated[Device, Depends(current_device)]


def device_or_user(
    request: Request, db: DbDep, authorization: Annotated[str | None, Header()] = None
) -> Device | User:
    """Downloads: a device by its token, or a signed-in person."""
    if authorization:
        return current_device(db, authorization)
    return current_login(request, db).user


DeviceOrUserDep = Annotated[Device | User, Depends(device_or_user)]
