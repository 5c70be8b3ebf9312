"""The app factory uvicorn's worker processes call (`soundwarden-cloud serve --workers N`).

Workers are spawned as fresh interpreters that import the app by name, so nothing the parent
set up reaches them: each sets up logging itself, in the format `serve` was given (passed in
SOUNDWARDEN_LOG_FORMAT, which is not a setting), then builds its app.
"""

from __future__ import annotations

import os
from typing import cast

from fastapi import FastAPI

from cloud.core.logging import LogFormat, configure_logging
from cloud.main import create_app

LOG_FORMAT_ENV = "SOUNDWARDEN_LOG_FORMAT"


def create_worker_app() -> FastAPI:
    configure_logging(cast(LogFormat, os.environ.get(LOG_FORMAT_ENV, "text")))
    return create_app()
