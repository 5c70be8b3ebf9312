"""Prometheus metrics, one set per process (`GET /metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "soundwarden_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "soundwarden_http_request_seconds", "Time to answer an HTTP request", ["method", "route"]
)
CLIPS = Counter("soundwarden_clips_total", "Clip uploads by outcome", ["result"])
MQTT_MESSAGES = Counter(
    "soundwarden_mqtt_messages_total", "Messages the MQTT bridge received", ["kind", "result"]
)
JOBS = Counter("soundwarden_jobs_total", "Background jobs finished", ["kind", "state"])
