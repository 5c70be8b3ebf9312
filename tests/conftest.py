"""Shared test fixtures: the shipped recordings and the development datasets beside the checkout."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.bundle import write_bundle
from models.frontend import FrontendConfig
from tests.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parents[1]
FIXTURE_AUDIO = REPO / "tests" / "fixtures" / "audio"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

CRY_8K_ORIGIN = FIXTURE_AUDIO / "cry" / "donateacry_android_035c6b30.wav"
CRY_FULL_BAND = FIXTURE_AUDIO / "cry" / "donateacry_ios_045c5483.wav"
SPEECH = FIXTURE_AUDIO / "other" / "fsdd_3_theo_10.wav"
MUSIC = FIXTURE_AUDIO / "other" / "moh_reno_project-system_0040s.wav"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"development datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto of the test's own on a free loopback port."""
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    server = Mosquitto(folder)
    server.start()
    yield server
    server.stop()


def write_test_bundle(tmp_path: Path, name: str = "bundle") -> Path:
    """An unsigned two-runtime cry-detector bundle whose model files are placeholder bytes
    (the bundle format does not look inside them)."""
    onnx, tflite = tmp_path / "src.onnx", tmp_path / "src.tflite"
    onnx.write_bytes(b"onnx model bytes")
    tflite.write_bytes(b"tflite model bytes")
    out = tmp_path / name
    write_bundle(
        out,
        name="cry-detector",
        version="1.0.0",
        task="classification",
        labels=["cry", "other"],
        thresholds={"cry": 0.6},
        features=FrontendConfig(),
        files={"model.onnx": ("onnx", onnx), "model.tflite": ("tflite", tflite)},
        metrics={"test": {"roc_auc": 0.99}},
    )
    return out
