"""ONNX Runtime (CPU). Float and INT8 QDQ models alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.runtimes import FloatArray, Runtime, register


@register
class OnnxRuntime(Runtime):
    kind = "onnx"

    def __init__(self, model_path: Path, *, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def run(self, batch: FloatArray) -> FloatArray:
        (scores,) = self._session.run(None, {self._input: np.ascontiguousarray(batch)})[:1]
        return np.asarray(scores, dtype=np.float32)
