"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from cloud.api.routes import health
from cloud.core.config import Settings
from models import __version__

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = FastAPI(title="soundwarden", version=__version__)
    app.state.settings = settings
    app.include_router(health.router, prefix=API_PREFIX)
    return app
