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

# Stated tolerances: torch vs ONNX float is the same arithmetic (1e-5 on probabilities);
# INT8 QDQ vs float is quantization noise (0.05 on probabilities for this small network).
FLOAT_TOLERANCE, INT8_TOLERANCE = 1e-5, 0.05


def _real_windows() -> np.ndarray:
    logmel = LogMel(FrontendConfig(normalisation="window_mean"))
    return np.concatenate(
        [logmel.windows(load_mono(p), 4000) for p in (CRY_FULL_BAND, CRY_8K_ORIGIN)]
    )


def test_compact_cnn_fits_the_edge_budget() -> None:
    assert parameter_count(CompactCNN(2)) <= 300_000


def test_torch_onnx_float_and_int8_agree_on_real_windows(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CompactCNN(2).eval()
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
