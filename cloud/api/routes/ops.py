"""Operations: readiness for load balancers and systemd, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from cloud.api.deps import DbDep
from cloud.api.routes.health import Health
from models import __version__

router = APIRouter(tags=["operations"])


@router.get("/healthz", responses={503: {"description": "The database does not answer"}})
def healthz(db: DbDep) -> Health:
    """The process answers and so does its database."""
    try:
        db.execute(text("SELECT 1"))
    except Exception as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"database: {exc}") from None
    return Health(status="ok", version=__version__)


@router.get("/metrics", response_class=Response)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
