"""The default bundles shipped in the repository: signed, loadable, and sensible on real audio."""

from __future__ import annotations

import numpy as np
import pytest

from models.bundle import load_bundle
from models.evaluate import evaluate
from models.inference import BundleModel
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
    assert np.abs(a - b).max() < 0.05
    # Windows that sit right on the threshold may flip; no others.
    decided = np.abs(b - threshold) > 0.05
    np.testing.assert_array_equal((a >= threshold)[decided], (b >= threshold)[decided])
