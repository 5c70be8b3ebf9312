"""Clips for the labelling tests, stored as ingestion stores them: a row plus a 16 kHz mono FLAC
of a real recording in the app's storage."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import soundfile as sf
from fastapi import FastAPI
from sqlalchemy.orm import Session as Db

from cloud.storage import ClipStorage
from cloud.tables import Clip, Label
from models.audio import load_mono

RECORDING = Path(__file__).resolve().parents[1] / "fixtures/audio/cry/donateacry_ios_045c5483.wav"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@cache
def flac() -> tuple[bytes, float]:
    """The recording as the 16 kHz mono FLAC ingestion keeps, and its length in seconds."""
    samples = load_mono(RECORDING)
    out = io.BytesIO()
    sf.write(out, samples, 16000, format="FLAC")
    return out.getvalue(), samples.shape[0] / 16000


def add_labels(db: Db, *labels: tuple[str, int | None]) -> None:
    db.add_all(Label(name=name, key=key) for name, key in labels)
    db.flush()


def add_clip(db: Db, storage: ClipStorage, clip_id: str, minutes: int = 0, **fields: Any) -> Clip:
    """A device clip received `minutes` after T0; `fields` override the row's columns."""
    data, duration = flac()
    key = f"clips/{clip_id}/audio.flac"
    storage.put(key, data)
    values: dict[str, Any] = {
        "source": "device",
        "group_id": "pi-kitchen",
        "device_label": "cry",
        "device_score": 0.9,
        "received_at": T0 + timedelta(minutes=minutes),
        "sample_rate": 16000,
        "channels": 1,
        "duration_s": duration,
        "original_key": key,
        "original_format": "flac",
        "audio_key": key,
        "sha256": "0" * 64,
        **fields,
    }
    clip = Clip(id=clip_id, **values)
    db.add(clip)
    db.flush()
    return clip


def seed(app: FastAPI, *clips: dict[str, Any], labels: bool = True) -> None:
    """Labels cry (key 1) and other (key 2), and clips (`clip_id`, `minutes`, column overrides)."""
    with app.state.sessions() as db:
        if labels:
            add_labels(db, ("cry", 1), ("other", 2))
        for fields in clips:
            add_clip(db, app.state.storage, **fields)
        db.commit()
