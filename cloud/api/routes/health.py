"""Liveness: the demo and clients poll this (readiness and metrics: `ops`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from models import __version__

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str


@router.get("/health")
def health() -> Health:
    """The process answers."""
    return Health(status="ok", version=__version__)
