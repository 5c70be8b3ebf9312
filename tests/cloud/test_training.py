"""A training job from labelled clips: splits by group, a signed bundle in the registry, the
comparison with the deployed model on the same test clips, and a clear failure when the
labels cannot support an honest split. SQLite only: training is the slow part, not the store."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud import registry
from cloud.splits import SPLITS, split_of
from models.audio import load_mono
from tests.cloud.clipdata import add_clip, add_labels
from tests.cloud.jobutil import wait_job
from tests.conftest import CRY_8K_ORIGIN, CRY_FULL_BAND, MUSIC, SPEECH


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'cloud.db'}"


def _group_in(split: str, stem: str) -> str:
    """A group id (a device name) that `split_of` puts in `split`."""
    return next(f"{stem}-{n}" for n in range(1000) if split_of(f"{stem}-{n}") == split)


def _flac(path: Path) -> bytes:
    out = io.BytesIO()
    sf.write(out, load_mono(path), 16000, format="FLAC")
    return out.getvalue()


def _seed(app: FastAPI, splits: tuple[str, ...]) -> None:
    """Per split: two cry clips and two other clips, from devices in that split."""
    with app.state.sessions() as db:
        add_labels(db, ("cry", 1), ("other", 2))
        for split in splits:
            group = _group_in(split, "pi")
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


def test_training_registers_a_signed_bundle_compared_with_the_deployed_one(
    app: FastAPI, admin: TestClient, labeller: TestClient
) -> None:
    _seed(app, SPLITS)
    body = {"name": "cry-detector", "labels": ["cry", "other"], "epochs": 2}
    assert labeller.post("/api/v1/jobs/train", json=body).status_code == 403
    started = admin.post("/api/v1/jobs/train", json=body)
    assert started.status_code == 202, started.text
    job = wait_job(admin, started.json()["id"], timeout_s=300)
    assert job["state"] == "succeeded", job["message"] + job.get("log", "")
    result = job["result"]
    assert result["counts"] == {s: {"cry": 2, "other": 2} for s in SPLITS}
    version = result["model"]["version"]
    assert version == f"1.1.0+job{job['id']}"
    comparison = result["comparison"]
    assert comparison["deployed"]["version"] == "1.1.0"
    for side in ("new", "deployed"):
        assert 0.0 <= comparison[side]["clip"]["roc_auc"] <= 1.0
        assert comparison[side]["majority_baseline"]["accuracy"] == 0.5
    assert [h["epoch"] for h in result["history"]] == [1, 2]

    model = admin.get(f"/api/v1/models/cry-detector/{version}").json()
    assert model["job_id"] == job["id"] and not model["current"]
    with app.state.sessions() as db:
        row = registry.get(db, "cry-detector", version)
    bundle = registry.open_bundle(app.state.settings, row)
    cloud_key = registry.trusted_keys(app.state.settings)
    assert bundle.signed_by in cloud_key.ids and bundle.manifest.metrics["test"]["clip"]
    for plot in result["plots"]:
        png = admin.get(f"/api/v1/jobs/{job['id']}/plots/{plot}")
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert "training_curves.png" in result["plots"]
    # Only the plots the job listed are served, not other files of its run.
    assert admin.get(f"/api/v1/jobs/{job['id']}/plots/metrics.json").status_code == 404


def test_training_without_clips_in_every_split_fails_and_says_why(
    app: FastAPI, admin: TestClient
) -> None:
    _seed(app, ("train",))
    started = admin.post("/api/v1/jobs/train", json={"epochs": 1})
    job = wait_job(admin, started.json()["id"])
    assert job["state"] == "failed"
    assert "none in val/cry" in job["message"] and "label clips from more" in job["message"]
