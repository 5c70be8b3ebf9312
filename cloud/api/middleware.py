"""Request metrics: every HTTP request counted and timed, by method, route and status."""

from __future__ import annotations

import time
from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.core.metrics import HTTP_REQUESTS, HTTP_SECONDS

UNMATCHED = "unmatched"


class HttpMetricsMiddleware:
    """Labels requests with the route template (`/api/v1/devices/{device_id}`), never the raw
    path: one series per device id, or per path a scanner tries, would swamp Prometheus.

    A plain ASGI middleware, so streamed responses pass through unbuffered. The router leaves
    the matched endpoint in the scope (`scope["route"]` is there for FastAPI routes only, and
    since FastAPI 0.137 lacks the `include_router` prefix); the full templates come from the
    app's `routes`, read at the first request, when every router is in place."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes
        self._templates: dict[int, str] | None = None  # id(endpoint) -> template

    def _template(self, endpoint: object) -> str:
        if self._templates is None:
            self._templates = {}
            for context in iter_route_contexts(self._routes):
                # A mount (static files) leaves its app in the scope as the endpoint.
                handler = context.endpoint or getattr(context, "app", None)
                if context.path and handler is not None:
                    self._templates[id(handler)] = context.path
        return self._templates.get(id(endpoint), UNMATCHED)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            route, method = self._template(scope.get("endpoint")), scope["method"]
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
