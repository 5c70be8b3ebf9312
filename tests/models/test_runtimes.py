from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle, sign_bundle, write_bundle
from models.frontend import FrontendConfig
from models.inference import BundleModel, InferenceError
from models.runtimes import RuntimeUnavailableError, runtime_class
from models.signing import TrustedKeys, generate_keypair, load_private_key
from tests.bundles import tiny_onnx

pytest.importorskip("onnx")


def _bundle(tmp_path: Path, nan: bool = False) -> BundleModel:
    source = tiny_onnx(tmp_path / "m.onnx", "nan" if nan else "mean")
    private, public = generate_keypair(tmp_path / "keys", "k")
    write_bundle(
        tmp_path / "b",
        name="tiny",
        version="1",
        task="classification",
        labels=["cry", "other"],
        thresholds={"cry": 0.5},
        features=FrontendConfig(),
        files={"model.onnx": ("onnx", source)},
    )
    sign_bundle(tmp_path / "b", load_private_key(private))
    return BundleModel(load_bundle(tmp_path / "b", TrustedKeys.from_paths([public])))


def test_onnx_runtime_scores_a_batch_of_windows(tmp_path: Path) -> None:
    model = _bundle(tmp_path)
    windows = np.stack([np.full((97, 64), 1.0), np.full((97, 64), -1.0)]).astype(np.float32)
    scores = model.scores(windows)
    np.testing.assert_allclose(scores[:, 0], 1 / (1 + np.exp([-2.0, 2.0])), rtol=1e-5)


def test_nan_output_is_an_error_never_a_quiet_zero(tmp_path: Path) -> None:
    model = _bundle(tmp_path, nan=True)
    with pytest.raises(InferenceError, match="NaN"):
        model.scores(np.zeros((1, 97, 64), dtype=np.float32))


def test_missing_runtime_file_and_unknown_runtime(tmp_path: Path) -> None:
    model = _bundle(tmp_path)
    assert model.runtime_kind == "onnx"
    with pytest.raises(RuntimeUnavailableError, match="unknown runtime 'coreml'"):
        runtime_class("coreml")
