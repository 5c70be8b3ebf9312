"""A verified bundle ready to score audio: its own front end and the chosen runtime.

Used by the edge and by `evaluate` alike, so what is measured is what runs on the device.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from models.bundle import Bundle
from models.frontend import FloatArray, LogMel
from models.runtimes import RuntimeUnavailableError, runtime_class


def choose_runtime(preference: str, bundle: Bundle) -> str:
    """The configured runtime, or for `auto` the first the bundle carries and this machine has."""
    roles = {entry.role for entry in bundle.manifest.files.values()}
    candidates = ["onnx", "tflite"] if preference == "auto" else [preference]
    problems = []
    for kind in candidates:
        if kind not in roles:
            problems.append(f"the bundle has no {kind} model")
            continue
        try:
            runtime_class(kind)
        except RuntimeUnavailableError as exc:
            problems.append(str(exc))
            continue
        return kind
    raise RuntimeUnavailableError("no usable runtime: " + "; ".join(problems))


class InferenceError(RuntimeError):
    """The model produced something that is not a score: never read as 'nothing detected'."""


class BundleModel:
    def __init__(
        self,
        bundle: Bundle,
        *,
        runtime: str = "onnx",
        precision: Literal["int8", "float"] = "int8",
        threads: int = 1,
    ) -> None:
        self.manifest = bundle.manifest
        self.runtime_kind = runtime
        self.precision = precision
        role = runtime if precision == "int8" else f"{runtime}_float"
        self._runtime = runtime_class(runtime)(bundle.path(role), threads=threads)  # type: ignore[arg-type]
        self.logmel = LogMel(self.manifest.features)
        self._outputs = len(self.manifest.labels) if self.manifest.task == "classification" else 1

    def scores(self, windows: FloatArray) -> FloatArray:
        """Scores (n, outputs) of feature windows (n, frames, mels)."""
        out = self._runtime.run(windows[:, None].astype(np.float32, copy=False))
        if out.shape != (windows.shape[0], self._outputs):
            raise InferenceError(
                f"model output shape {out.shape}, expected {(windows.shape[0], self._outputs)}"
            )
        if not np.isfinite(out).all():
            raise InferenceError("model produced NaN or infinite scores")
        return out
