"""LiteRT (TensorFlow Lite): ai-edge-litert, or tflite-runtime where only that is installed
(older Raspberry Pi OS images; it needs numpy<2). XNNPACK does the float and INT8 kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.runtimes import FloatArray, Runtime, register

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - depends on what the device has installed
    from tflite_runtime.interpreter import Interpreter


@register
class TfliteRuntime(Runtime):
    kind = "tflite"

    def __init__(self, model_path: Path, *, threads: int) -> None:
        self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]

    def run(self, batch: FloatArray) -> FloatArray:
        # The converted graph has a fixed batch of one; the edge scores one window per hop.
        out = []
        for window in batch:
            self._interpreter.set_tensor(self._input, np.ascontiguousarray(window[None]))
            self._interpreter.invoke()
            out.append(self._interpreter.get_tensor(self._output)[0].copy())
        return np.asarray(out, dtype=np.float32).reshape(len(batch), -1)
