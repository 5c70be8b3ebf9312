"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cloud import registry
from cloud.api.middleware import HttpMetricsMiddleware
from cloud.api.routes import auth, devices, events, health, ops, users
from cloud.api.routes import registry as registry_routes
from cloud.bridge import mqtt_service
from cloud.core.config import Settings
from cloud.core.db import make_engine, make_sessionmaker, migrate
from cloud.storage import make_storage
from models import __version__

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.db_url)
    engine = make_engine(settings.db_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with mqtt_service(settings, app.state.sessions):
            yield
        engine.dispose()

    app = FastAPI(title="soundwarden", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.storage = make_storage(settings)
    with app.state.sessions() as db:
        registry.seed_pretrained(db, settings)
    app.add_middleware(HttpMetricsMiddleware)
    app.include_router(ops.router)
    for module in (health, auth, users, devices, events, registry_routes):
        app.include_router(module.router, prefix=API_PREFIX)
    return app
