"""Background jobs in tests: waiting for them through the API, with a deadline (never a fixed
sleep), a recording long enough to import for a while, and labelled clips a training job can
split honestly."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud.splits import split_of
from models.audio import load_mono
from tests.cloud.clipdata import add_clip, add_labels
from tests.conftest import CRY_8K_ORIGIN, CRY_FULL_BAND, MUSIC, SPEECH

ENDED = ("succeeded", "failed", "cancelled")
RATE = 16000


def wait_job(
    client: TestClient, job_id: int, states: tuple[str, ...] = ENDED, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The job once it is in one of `states` (a cancelled job only once it has stopped)."""

    def reached(job: dict[str, Any]) -> bool:
        stopping = job["state"] == "cancelled" and job["finished_at"] is None
        return job["state"] in states and not stopping

    return wait_until(client, job_id, reached, str(states), timeout_s)


def wait_until(
    client: TestClient,
    job_id: int,
    condition: Callable[[dict[str, Any]], bool],
    what: str,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """The job once `condition` holds for it (as GET /api/v1/jobs/{id} shows it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(f"/api/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if condition(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} not {what} in {timeout_s} s: {job}"
        time.sleep(0.05)


def long_recording(path: Path, seconds: float) -> Path:
    """A 16 kHz mono WAV of the fixtures end to end, over and over: importing it in 1 s clips
    every 0.25 s takes a while (about 10 ms a clip here)."""
    fixtures = [load_mono(p) for p in (CRY_8K_ORIGIN, MUSIC, CRY_FULL_BAND, SPEECH)]
    sf.write(path, np.resize(np.concatenate(fixtures), round(seconds * RATE)), RATE)
    return path


def group_in(split: str, stem: str) -> str:
    """A group id (a device name) that `split_of` puts in `split`."""
    return next(f"{stem}-{n}" for n in range(1000) if split_of(f"{stem}-{n}") == split)


def _flac(path: Path) -> bytes:
    out = io.BytesIO()
    sf.write(out, load_mono(path), RATE, format="FLAC")
    return out.getvalue()


def seed_training_clips(app: FastAPI, splits: tuple[str, ...]) -> None:
    """Labels cry and other; per split two cry clips and two other clips, from devices in
    that split."""
    with app.state.sessions() as db:
        add_labels(db, ("cry", 1), ("other", 2))
        for split in splits:
            group = group_in(split, "pi")
            for n, (label, path) in enumerate(
                [
                    ("cry", CRY_FULL_BAND),
                    ("cry", CRY_8K_ORIGIN),
                    ("other", SPEECH),
                    ("other", MUSIC),
                ]
            ):
                clip = add_clip(db, app.state.storage, f"{split}-{n}", group_id=group, label=label)
                app.state.storage.put(clip.audio_key, _flac(path))
        db.commit()
