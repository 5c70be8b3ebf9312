"""A training job from labelled clips: splits by group, a signed bundle in the registry, the
comparison with the deployed model on the same test clips, a clear failure when the labels
cannot support an honest split, and every network offered (YOLOv8s-cls among them). SQLite
only: training is the slow part, not the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud import registry
from cloud.jobs.train import ARCHITECTURES, Architecture
from cloud.splits import SPLITS
from models.training.recipes import YOLO_CONFIGS, Recipe
from tests.bundles import SHIPPED_VERSION
from tests.cloud.jobutil import seed_training_clips, wait_job


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'cloud.db'}"


def test_training_registers_a_signed_bundle_compared_with_the_deployed_one(
    app: FastAPI, admin: TestClient, labeller: TestClient
) -> None:
    seed_training_clips(app, SPLITS)
    body = {"name": "cry-detector", "labels": ["cry", "other"], "epochs": 2}
    assert labeller.post("/api/v1/jobs/train", json=body).status_code == 403
    started = admin.post("/api/v1/jobs/train", json=body)
    assert started.status_code == 202, started.text
    job = wait_job(admin, started.json()["id"], timeout_s=300)
    assert job["state"] == "succeeded", job["message"] + job.get("log", "")
    result = job["result"]
    assert result["counts"] == {s: {"cry": 2, "other": 2} for s in SPLITS}
    version = result["model"]["version"]
    assert version == f"{SHIPPED_VERSION}+job{job['id']}"
    comparison = result["comparison"]
    assert comparison["deployed"]["version"] == SHIPPED_VERSION
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
    seed_training_clips(app, ("train",))
    started = admin.post("/api/v1/jobs/train", json={"epochs": 1})
    job = wait_job(admin, started.json()["id"])
    assert job["state"] == "failed"
    assert "none in val/cry" in job["message"] and "label clips from more" in job["message"]


def test_every_network_the_api_takes_has_a_name_and_a_trainer() -> None:
    assert set(ARCHITECTURES) == set(get_args(Architecture))  # the console's form offers each
    assert set(YOLO_CONFIGS) <= set(get_args(Recipe.model_fields["architecture"].annotation))


def test_yolov8s_is_offered_and_trains_a_bigger_network_than_n(
    app: FastAPI, admin: TestClient, tmp_path: Path
) -> None:
    from models.training.yolo import _ultralytics

    seed_training_clips(app, SPLITS)
    unknown = admin.post("/api/v1/jobs/train", json={"architecture": "yolov8x_cls"})
    assert unknown.status_code == 422
    body = {"architecture": "yolov8s_cls", "epochs": 1, "version": "2.0.0-s"}
    started = admin.post("/api/v1/jobs/train", json=body)
    assert started.status_code == 202, started.text
    job = wait_job(admin, started.json()["id"], timeout_s=300)
    assert job["state"] == "succeeded", job["message"] + job["log_tail"]
    assert "epoch 1/1: train loss" in job["log_tail"] and "val accuracy" in job["log_tail"]

    with app.state.sessions() as db:
        row = registry.get(db, "cry-detector", "2.0.0-s")
    training = registry.open_bundle(app.state.settings, row).manifest.training
    assert "yolov8s-cls.yaml" in training["architecture"]
    # n as the job would build it for the same two labels, untrained.
    ultralytics = _ultralytics(tmp_path / "ultralytics-config")
    n = ultralytics.nn.tasks.ClassificationModel(YOLO_CONFIGS["yolov8n_cls"], nc=2, verbose=False)
    n_parameters = sum(p.numel() for p in n.parameters())
    assert training["parameters"] > 3 * n_parameters
