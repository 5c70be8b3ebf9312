"""Users, console sessions, the login rate limit and device enrolment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session as Db

from cloud.core.security import hash_password, new_token, token_hash, verify_password
from cloud.tables import ROLES, Device, LoginAttempt, Session, User, utcnow

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AccountError(ValueError):
    """A request about accounts that cannot be carried out; the message says why."""


class LoginRateLimitedError(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def check_name(kind: str, name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise AccountError(
            f"{kind} {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    return name


def create_user(db: Db, username: str, password: str, role: str) -> User:
    check_name("user name", username)
    if role not in ROLES:
        raise AccountError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if db.scalar(select(User).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} exists already")
    try:
        user = User(username=username, password_hash=hash_password(password), role=role)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    db.add(user)
    db.flush()
    return user


def set_password(user: User, password: str) -> None:
    try:
        user.password_hash = hash_password(password)
    except ValueError as exc:
        raise AccountError(str(exc)) from None


@dataclass(frozen=True)
class LoginLimit:
    attempts: int
    window_s: float


def authenticate(db: Db, username: str, password: str, address: str, limit: LoginLimit) -> User:
    """The user, or AccountError for bad credentials, or LoginRateLimitedError once `limit.attempts`
    failures for this name or from this address fall inside the window."""
    since = utcnow() - timedelta(seconds=limit.window_s)
    db.execute(delete(LoginAttempt).where(LoginAttempt.at < since))
    failures = db.scalars(
        select(LoginAttempt.at)
        .where(LoginAttempt.at >= since)
        .where(or_(LoginAttempt.username == username, LoginAttempt.address == address))
        .order_by(LoginAttempt.at)
    ).all()
    if len(failures) >= limit.attempts:
        oldest = failures[-limit.attempts]
        retry = (oldest + timedelta(seconds=limit.window_s) - utcnow()).total_seconds()
        raise LoginRateLimitedError(max(1, int(retry) + 1))
    user = db.scalar(select(User).where(User.username == username))
    if (
        not verify_password(user.password_hash if user else None, password)
        or user is None
        or user.disabled
    ):
        db.add(LoginAttempt(username=username[:64], address=address[:64]))
        db.commit()
        raise AccountError("wrong user name or password")
    return user


def open_session(db: Db, user: User, hours: float) -> tuple[str, Session]:
    """A new login: the cookie token (returned once) and its row (holding the CSRF token)."""
    token = new_token()
    now = utcnow()
    row = Session(
        token_hash=token_hash(token),
        user_id=user.id,
        csrf_token=new_token(),
        created_at=now,
        expires_at=now + timedelta(hours=hours),
    )
    db.add(row)
    db.execute(delete(Session).where(Session.expires_at < now))
    return token, row


def find_session(db: Db, token: str) -> tuple[Session, User] | None:
    row = db.get(Session, token_hash(token))
    if row is None or row.expires_at < utcnow():
        return None
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return row, user


def add_device(db: Db, device_id: str) -> str:
    """Enrol a device; returns its token, which is stored only as a hash."""
    check_name("device id", device_id)
    if db.get(Device, device_id) is not None:
        raise AccountError(f"device {device_id!r} is enrolled already (rotate its token instead)")
    token = new_token()
    db.add(Device(id=device_id, token_hash=token_hash(token)))
    db.flush()
    return token


def rotate_device_token(db: Db, device_id: str) -> str:
    device = _device(db, device_id)
    token = new_token()
    device.token_hash = token_hash(token)
    device.revoked_at = None
    return token


def revoke_device(db: Db, device_id: str) -> Device:
    device = _device(db, device_id)
    device.revoked_at = utcnow()
    return device


def device_for_token(db: Db, token: str) -> Device | None:
    device = db.scalar(select(Device).where(Device.token_hash == token_hash(token)))
    if device is None or device.revoked_at is not None:
        return None
    return device


def _device(db: Db, device_id: str) -> Device:
    device = db.get(Device, device_id)
    if device is None:
        raise AccountError(f"no device {device_id!r}")
    return device


def user_count(db: Db) -> int:
    return int(db.scalar(select(func.count()).select_from(User)) or 0)
