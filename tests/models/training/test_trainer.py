"""One real, tiny training run: data folders in, signed bundle and run report out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from models.bundle import Bundle, load_bundle, sign_bundle
from models.evaluate import evaluate
from models.signing import TrustedKeys, generate_keypair, load_private_key
from models.training.recipes import CRY_DETECTOR, Source
from models.training.trainer import train_recipe
from tests.conftest import CRY_8K_ORIGIN, CRY_FULL_BAND, SPEECH

SPLITS = ("train", "val", "test")


TINY_SOURCES = [Source(dataset="cry", target="cry"), Source(dataset="background", target="other")]


def _signed(bundle_dir: Path, tmp_path: Path) -> Bundle:
    """Sign a freshly trained bundle with a new key and load it as a device would."""
    private, public = generate_keypair(tmp_path / "keys", "k")
    sign_bundle(bundle_dir, load_private_key(private))
    return load_bundle(bundle_dir, TrustedKeys.from_paths([public]))


def _view(tiny_data: Path, tmp_path: Path, cries_as: str, speech_as: str) -> Path:
    """The tiny set as a two-label evaluation folder: cries and speech under the given labels."""
    view = tmp_path / "view"
    shutil.copytree(tiny_data / "cry" / "hungry", view / cries_as)
    shutil.copytree(tiny_data / "background" / "speech", view / speech_as)
    rows = ["path,label,split,group"] + [
        f"{label}/{i}.wav,{label},{split},{label}{i}"
        for label in (cries_as, speech_as)
        for i, split in enumerate(SPLITS)
    ]
    (view / "manifest.csv").write_text("\n".join(rows) + "\n")
    return view


def _dataset(root: Path, label: str, sources: list[Path]) -> None:
    (root / label).mkdir(parents=True)
    rows = ["path,label,split,group"]
    for i, (split, source) in enumerate(zip(SPLITS * 2, sources, strict=False)):
        name = f"{label}/{i}.wav"
        shutil.copyfile(source, root / name)
        rows.append(f"{name},{label},{split},g{i}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    noise = tmp_path / "noise.wav"
    rng = np.random.default_rng(0)
    sf.write(noise, (rng.standard_normal(3 * 16000) * 0.05).astype(np.float32), 16000)
    _dataset(data / "cry", "hungry", [CRY_FULL_BAND, CRY_8K_ORIGIN, CRY_FULL_BAND])
    _dataset(data / "background", "speech", [SPEECH, noise, SPEECH])
    return data


def test_training_writes_a_bundle_that_signs_loads_and_evaluates(
    tiny_data: Path, tmp_path: Path
) -> None:
    recipe = CRY_DETECTOR.model_copy(
        update={
            "sources": TINY_SOURCES,
            "batch_size": 16,
        }
    )
    bundle_dir, manifest = train_recipe(
        recipe, tiny_data, tmp_path / "out", version="0.0.1", epochs=2, threads=1
    )
    run = tmp_path / "out" / "run"
    for picture in ("training_curves.png", "val_confusion.png", "val_roc_pr.png"):
        assert (run / picture).read_bytes()[:4] == b"\x89PNG"
    assert (run / "metrics.json").is_file()
    assert manifest.labels == ["cry", "other"] and set(manifest.thresholds) == {"cry"}
    assert manifest.training["windows"]["train"] > 0
    assert manifest.features.normalisation == "window_mean"

    bundle = _signed(bundle_dir, tmp_path)

    result = evaluate(bundle, _view(tiny_data, tmp_path, "cry", "other"), split=None)
    assert result["clip"]["count"] == 6
    assert 0.0 <= result["window"]["roc_auc"] <= 1.0
    assert result["false_alarms"]["negative_hours"] > 0


def test_evaluate_refuses_a_folder_with_other_labels(tiny_data: Path, tmp_path: Path) -> None:
    from models.evaluate import EvaluationError

    recipe = CRY_DETECTOR.model_copy(
        update={
            "sources": TINY_SOURCES,
        }
    )
    bundle_dir, _ = train_recipe(
        recipe, tiny_data, tmp_path / "out", version="0.0.1", epochs=1, threads=1
    )
    bundle = _signed(bundle_dir, tmp_path)
    with pytest.raises(
        EvaluationError, match=r"do not match the bundle's labels \['cry', 'other'\]"
    ):
        evaluate(bundle, tiny_data / "cry")


def test_anomaly_training_scores_unseen_sounds_above_normal_ones(
    tiny_data: Path, tmp_path: Path
) -> None:
    from models.training.anomaly import train_anomaly
    from models.training.recipes import MACHINE_ANOMALY

    # "Normal" is the speech and noise of the tiny set; cries are the anomaly to notice.
    recipe = MACHINE_ANOMALY.model_copy(
        update={
            "sources": [Source(dataset="background", target="normal")],
        }
    )
    bundle_dir, manifest = train_anomaly(
        recipe, tiny_data, tmp_path / "out", version="0.0.1", epochs=3, threads=1
    )
    assert manifest.task == "anomaly" and manifest.labels == ["abnormal", "normal"]
    assert manifest.thresholds["abnormal"] > 0
    bundle = _signed(bundle_dir, tmp_path)

    result = evaluate(bundle, _view(tiny_data, tmp_path, "abnormal", "normal"), split=None)
    assert result["clip"]["count"] == 6
    assert result["clip"]["positives"] == 3


def test_yolo_trains_offline_from_scratch_into_a_bundle_of_log_mel_windows(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    # Checked without importing: ultralytics writes its settings where YOLO_CONFIG_DIR says
    # at first import, and this test must not touch the user's home.
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics (the train extra) is not installed")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-config"))
    from models.inference import BundleModel
    from models.training.recipes import CRY_DETECTOR_YOLO
    from models.training.yolo import train_yolo

    recipe = CRY_DETECTOR_YOLO.model_copy(
        update={
            "sources": TINY_SOURCES,
            "batch_size": 8,
        }
    )
    bundle_dir, manifest = train_yolo(
        recipe, tiny_data, tmp_path / "out", version="0.0.1", epochs=1, threads=1
    )
    assert "yolov8n-cls" in manifest.training["architecture"]
    private, public = generate_keypair(tmp_path / "keys", "k")
    sign_bundle(bundle_dir, load_private_key(private))
    model = BundleModel(load_bundle(bundle_dir, TrustedKeys.from_paths([public])))
    scores = model.scores(np.zeros((3, 97, 64), dtype=np.float32))
    assert scores.shape == (3, 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-3)
