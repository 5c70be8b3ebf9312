"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cloud import registry
from cloud.api.middleware import HttpMetricsMiddleware
from cloud.api.routes import (
    auth,
    clips,
    devices,
    events,
    health,
    imports,
    jobs,
    labels,
    ops,
    rollouts,
    spectrograms,
    users,
)
from cloud.api.routes import registry as registry_routes
from cloud.bridge import mqtt_service
from cloud.console import routes as console
from cloud.core.config import Settings
from cloud.core.db import make_engine, make_sessionmaker, migrate
from cloud.jobs import make_runner
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
        app.state.jobs.start()
        async with mqtt_service(settings, app.state.sessions):
            yield
        app.state.jobs.stop()
        engine.dispose()

    app = FastAPI(title="soundwarden", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_sessionmaker(engine)
    app.state.storage = make_storage(settings)
    app.state.jobs = make_runner(settings, app.state.sessions, app.state.storage)
    with app.state.sessions() as db:
        registry.seed_pretrained(db, settings)
    app.add_middleware(HttpMetricsMiddleware, routes=app.routes)
    app.include_router(ops.router)
    for module in (
        health,
        auth,
        users,
        devices,
        clips,
        events,
        registry_routes,
        rollouts,
        jobs,
        imports,
        labels,
        spectrograms,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(console.router)
    app.mount("/static", StaticFiles(directory=console.STATIC_DIR), name="static")
    return app
