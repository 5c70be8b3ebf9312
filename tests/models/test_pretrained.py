"""The default bundles shipped in the repository: signed, loadable, and sensible on real audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from models.evaluate import evaluate
from models.inference import BundleModel
from models.metrics import logit
from models.signing import TrustedKeys
from tests.conftest import FIXTURE_AUDIO, REPO

PRETRAINED = REPO / "models" / "pretrained"
TRUSTED = TrustedKeys.from_paths([PRETRAINED / "keys"])


def test_cry_detector_is_signed_by_the_release_key_and_small() -> None:
    bundle = load_bundle(PRETRAINED / "cry-detector", TRUSTED)
    assert bundle.manifest.labels == ["cry", "other"]
    assert bundle.path("onnx").stat().st_size < 500_000
    assert "test" in bundle.manifest.metrics


def test_cry_detector_hears_both_shipped_cries_and_not_the_spoken_digits() -> None:
    pytest.importorskip("onnxruntime")
    result = evaluate(load_bundle(PRETRAINED / "cry-detector", TRUSTED), FIXTURE_AUDIO, split=None)
    assert result["clip"]["per_class"]["cry"]["recall"] == 1.0
    assert result["clip"]["per_class"]["other"]["recall"] == 1.0


def test_evaluate_names_the_recording_the_ranking_loses_on(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import shutil

    from models.evaluate import format_report

    data = tmp_path / "data"
    shutil.copytree(FIXTURE_AUDIO, data)
    # A cry filed as a negative of its own group: every window of it outranks real cries' quiet
    # windows, so the window ranking loss has to be pinned on that group.
    shutil.copy(data / "cry" / "donateacry_android_035c6b30.wav", data / "other" / "filed.wav")
    with (data / "manifest.csv").open("a") as manifest:
        manifest.write("other/filed.wav,other,test,mislabelled:cry,8k-origin,copy,DbCL-1.0\n")

    result = evaluate(load_bundle(PRETRAINED / "cry-detector", TRUSTED), data, split=None)
    window = result["window"]
    worst = window["ranking_loss_by_group"]["negatives"]
    assert worst[0]["group"] == "mislabelled:cry"
    assert sum(w["share"] for w in worst) == pytest.approx(1 - window["roc_auc"])
    low, high = window["roc_auc_interval"]  # two cry recorders, four others: an interval
    assert low < window["roc_auc"] <= high  # redraws with the filed cry twice score lower
    assert "lost on negatives: mislabelled:cry" in format_report(result)


def test_evaluate_takes_a_cry_of_any_length(tmp_path: Path) -> None:
    """A labelled clip is as long as it is: 1.24 s holds one window by the clip length and two
    by the front end's frames (the second one's last 128 samples feed no frame); every window
    scored has to be gated, or evaluate fails on the user's own recordings."""
    pytest.importorskip("onnxruntime")
    import shutil

    import soundfile as sf

    data = tmp_path / "data"
    shutil.copytree(FIXTURE_AUDIO, data)
    cry, rate = sf.read(data / "cry" / "donateacry_ios_045c5483.wav", dtype="float32")
    start = int(np.argmax(np.abs(cry)))  # the loudest moment, so the cut holds a cry
    sf.write(data / "cry" / "short.wav", cry[start : start + 19_900], rate)
    with (data / "manifest.csv").open("a") as manifest:
        manifest.write("cry/short.wav,cry,test,short:cut,full-band,cut,DbCL-1.0\n")

    bundle = load_bundle(PRETRAINED / "cry-detector", TRUSTED)
    before = evaluate(bundle, FIXTURE_AUDIO, split=None)
    result = evaluate(bundle, data, split=None)
    assert result["clip"]["positives"] == before["clip"]["positives"] + 1
    added = result["window"]["positives"] - before["window"]["positives"]
    assert 1 <= added <= 2  # its sounding windows of the two scored


def test_paired_difference_is_nothing_against_itself_and_refuses_other_windows(
    tmp_path: Path,
) -> None:
    pytest.importorskip("onnxruntime")
    from models.evaluate import paired_difference, score
    from models.frontend import FrontendConfig
    from tests.bundles import make_bundle, signing_key

    shipped = load_bundle(PRETRAINED / "cry-detector", TRUSTED)
    scores = score(shipped, FIXTURE_AUDIO, split=None)
    same = paired_difference(scores, score(shipped, FIXTURE_AUDIO, split=None))
    assert same == {
        level: {"difference": 0.0, "low": 0.0, "high": 0.0}
        for level in ("window_roc_auc", "clip_roc_auc")
    }

    key, pub = signing_key(tmp_path)
    half_second = FrontendConfig(window_samples=8000, normalisation="window_mean")
    other = make_bundle(
        tmp_path / "b", key=key, version="9.0.0", behaviour="mean", features=half_second
    )
    other_scores = score(
        load_bundle(other, TrustedKeys.from_paths([pub])), FIXTURE_AUDIO, split=None
    )
    assert paired_difference(scores, other_scores) is None


def test_int8_and_float_models_make_the_same_decisions_on_real_windows() -> None:
    pytest.importorskip("onnxruntime")
    from models.audio import load_mono

    bundle = load_bundle(PRETRAINED / "cry-detector", TRUSTED)
    int8, full = BundleModel(bundle), BundleModel(bundle, precision="float")
    threshold = bundle.manifest.thresholds["cry"]
    windows = np.concatenate(
        [
            int8.logmel.windows(np.pad(s, (0, max(0, 16000 - len(s)))), 4000)
            for s in (load_mono(p) for p in sorted(FIXTURE_AUDIO.glob("*/*.wav")))
        ]
    )
    a, b = int8.scores(windows)[:, 0], full.scores(windows)[:, 0]
    # Stated tolerance: 0.1 in probability (reached only around p = 0.5, where the softmax is
    # steepest) ...
    assert np.abs(a - b).max() < 0.1

    # ... and identical decisions for every window not within 0.5 logits of the threshold.
    decided = np.abs(logit(b) - logit(threshold)) > 0.5
    assert decided.mean() > 0.8
    np.testing.assert_array_equal((a >= threshold)[decided], (b >= threshold)[decided])


def test_machine_anomaly_is_signed_and_finds_non_machine_sounds_abnormal() -> None:
    pytest.importorskip("onnxruntime")
    from models.audio import load_mono
    from models.evaluate import window_scores

    bundle = load_bundle(PRETRAINED / "machine-anomaly", TRUSTED)
    assert bundle.manifest.task == "anomaly"
    threshold = bundle.manifest.thresholds["abnormal"]
    for runtime in ("onnx", "tflite"):
        model = BundleModel(bundle, runtime=runtime, precision="float")
        for path in sorted(FIXTURE_AUDIO.glob("*/*.wav")):  # a cry or a voice, never a machine
            assert window_scores(model, load_mono(path), "abnormal").max() > threshold, path


def test_calibrate_sets_the_threshold_records_it_and_re_signs(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import shutil

    from models.bundle import sign_bundle
    from models.cli import main
    from models.signing import generate_keypair, load_private_key

    bundle_dir = tmp_path / "cry-detector"
    shutil.copytree(PRETRAINED / "cry-detector", bundle_dir)
    private, public = generate_keypair(tmp_path / "keys", "mine")
    sign_bundle(bundle_dir, load_private_key(private))  # a user's own copy, under their key
    assert (
        main(
            [
                "calibrate",
                "--bundle",
                str(bundle_dir),
                "--data",
                str(FIXTURE_AUDIO),
                "--split",
                "test",
                "--key",
                str(private),
            ]
        )
        == 0
    )
    bundle = load_bundle(bundle_dir, TrustedKeys.from_paths([public]))
    calibration = bundle.manifest.metrics["calibration"]
    assert calibration["split"] == "test" and calibration["chosen"]["f1"] == 1.0
    threshold = bundle.manifest.thresholds["cry"]
    assert threshold == pytest.approx(calibration["chosen"]["threshold"], abs=1e-6)
    # Not on the score of the clip that set it (where a runtime's rounding would flip that
    # clip) but halfway, in logits, between it and the next window score under it, so every
    # window (and so every clip and every false-alarm episode) is decided as at that score.
    from models.audio import load_mono
    from models.evaluate import window_scores

    model = BundleModel(bundle)
    scores = {
        label: [
            window_scores(model, load_mono(p), "cry")
            for p in sorted((FIXTURE_AUDIO / label).glob("*.wav"))
        ]
        for label in ("cry", "other")
    }
    lowest_cry = min(s.max() for s in scores["cry"])
    windows = np.concatenate(scores["cry"] + scores["other"])
    next_under = windows[windows < lowest_cry].max()
    assert max(s.max() for s in scores["other"]) < threshold < lowest_cry
    assert logit(lowest_cry) - logit(threshold) == pytest.approx(
        logit(threshold) - logit(next_under), abs=0.01
    )
    assert "calibrate" in bundle.manifest.training["threshold_selection"]
