from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.audio import load_mono  # noqa: E402
from models.frontend import FrontendConfig, LogMel  # noqa: E402
from models.runtimes.onnx import OnnxRuntime  # noqa: E402
from models.training.export import export_onnx, quantize_int8  # noqa: E402
from models.training.nets import CompactCNN, parameter_count  # noqa: E402
from tests.conftest import CRY_8K_ORIGIN, CRY_FULL_BAND  # noqa: E402

# Stated tolerances, on probabilities (classifier) or relative to the largest score
# (autoencoder): float runtimes vs torch 1e-4 (the same arithmetic, reordered); INT8 vs torch
# 0.05 (quantization noise).
FLOAT_TOLERANCE, INT8_TOLERANCE = 1e-4, 0.05


def _real_windows() -> np.ndarray:
    logmel = LogMel(FrontendConfig(normalisation="window_mean"))
    return np.concatenate(
        [logmel.windows(load_mono(p), 4000) for p in (CRY_FULL_BAND, CRY_8K_ORIGIN)]
    )


@pytest.mark.parametrize("architecture", ["compact_cnn", "conv_attention"])
def test_edge_classifiers_fit_the_parameter_budget(architecture: str) -> None:
    from models.training.nets import build

    assert parameter_count(build({"architecture": architecture, "n_labels": 2})) <= 300_000


@pytest.mark.parametrize("architecture", ["compact_cnn", "conv_attention"])
def test_torch_onnx_float_and_int8_agree_on_real_windows(tmp_path: Path, architecture: str) -> None:
    from models.training.nets import build

    torch.manual_seed(0)
    model = build({"architecture": architecture, "n_labels": 2}).eval()
    windows = _real_windows()
    with torch.no_grad():
        expected = model(torch.from_numpy(windows[:, None])).numpy()
    export_onnx(model, (1, 1, 97, 64), tmp_path / "float.onnx")
    as_float = OnnxRuntime(tmp_path / "float.onnx", threads=1).run(windows[:, None])
    np.testing.assert_allclose(as_float, expected, atol=FLOAT_TOLERANCE)
    quantize_int8(tmp_path / "float.onnx", tmp_path / "int8.onnx", windows)
    as_int8 = OnnxRuntime(tmp_path / "int8.onnx", threads=1).run(windows[:, None])
    assert np.abs(as_int8 - as_float).max() < INT8_TOLERANCE
    assert (tmp_path / "int8.onnx").stat().st_size < 500_000


def _tflite_python() -> Path:
    import os

    configured = os.environ.get("SOUNDWARDEN_TFLITE_PYTHON")
    if not configured:
        pytest.skip("SOUNDWARDEN_TFLITE_PYTHON unset: run through `make test` for TFLite checks")
    return Path(configured).absolute()  # not resolve(): a venv python is a symlink


@pytest.mark.parametrize("architecture", ["compact_cnn", "conv_attention", "conv_autoencoder"])
def test_torch_and_tflite_float_and_int8_agree_on_real_windows(
    tmp_path: Path, architecture: str
) -> None:
    from models.runtimes.tflite import TfliteRuntime
    from models.training.export import export_tflite
    from models.training.nets import build

    torch.manual_seed(0)
    windows = _real_windows()
    spec: dict[str, object] = {"architecture": architecture}
    if architecture == "conv_autoencoder":
        spec |= {"mean": float(windows.mean()), "std": float(windows.std())}
    else:
        spec["n_labels"] = 2
    model = build(spec).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(windows[:, None])).numpy()
    int8, full = tmp_path / "model.tflite", tmp_path / "model_float.tflite"
    export_tflite(model, windows, int8, full, python=_tflite_python())
    as_float = TfliteRuntime(full, threads=1).run(windows[:, None])
    # Probabilities compare absolutely; reconstruction errors relative to their size.
    scale = float(np.abs(expected).max()) if architecture == "conv_autoencoder" else 1.0
    np.testing.assert_allclose(as_float / scale, expected / scale, atol=FLOAT_TOLERANCE)
    as_int8 = TfliteRuntime(int8, threads=1).run(windows[:, None])
    assert np.abs(as_int8 - expected).max() / scale < INT8_TOLERANCE
    assert int8.stat().st_size < 500_000


def test_missing_converter_environment_is_a_clear_error(tmp_path: Path) -> None:
    from models.training.export import export_tflite

    with pytest.raises(FileNotFoundError, match="no TFLite converter environment"):
        export_tflite(
            CompactCNN(2),
            _real_windows()[:2],
            tmp_path / "a",
            tmp_path / "b",
            python=tmp_path / "missing" / "python",
        )
