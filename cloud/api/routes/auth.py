"""Console sign-in: a session cookie plus the CSRF token the pages echo back."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, Field

from cloud import accounts
from cloud.api.deps import SESSION_COOKIE, DbDep, LoginDep, SettingsDep

router = APIRouter(prefix="/auth", tags=["auth"])


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    username: str
    role: str
    csrf_token: str = Field(description="Send it back in X-CSRF-Token on every change.")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(
    "/login",
    responses={401: {"description": "Wrong credentials"}, 429: {"description": "Rate limited"}},
)
def login(
    body: Credentials, request: Request, response: Response, db: DbDep, settings: SettingsDep
) -> Me:
    limit = accounts.LoginLimit(settings.login_attempts, settings.login_window_s)
    try:
        user = accounts.authenticate(
            db, body.username, body.password, client_address(request), limit
        )
    except accounts.LoginRateLimitedError as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            str(exc),
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except accounts.AccountError as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    token, session = accounts.open_session(db, user, settings.session_hours)
    db.commit()
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
        path="/",
    )
    return Me(username=user.username, role=user.role, csrf_token=session.csrf_token)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(login: LoginDep, response: Response, db: DbDep) -> None:
    db.delete(db.merge(login.session))
    db.commit()
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/me")
def me(login: LoginDep) -> Me:
    return Me(
        username=login.user.username, role=login.user.role, csrf_token=login.session.csrf_token
    )
