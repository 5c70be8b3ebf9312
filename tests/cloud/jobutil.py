"""Waiting for background jobs through the API, with a deadline (never a fixed sleep)."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

ENDED = ("succeeded", "failed", "cancelled")


def wait_job(
    client: TestClient, job_id: int, states: tuple[str, ...] = ENDED, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The job once it is in one of `states` (a cancelled job only once it has stopped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        stopping = job["state"] == "cancelled" and job["finished_at"] is None
        if job["state"] in states and not stopping:
            return job
        assert time.monotonic() < deadline, f"job {job_id} not {states} in {timeout_s} s: {job}"
        time.sleep(0.05)
