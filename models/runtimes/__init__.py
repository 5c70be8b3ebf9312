"""Inference runtimes, one module per runtime, found through a registry keyed by type.

Everything above this layer (the edge's detector, `soundwarden-models evaluate`) talks to a
`Runtime` and never knows which one it got: the choice is made once, when a bundle is opened.
Runtime modules import their engine (onnxruntime, LiteRT) only when asked for.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_MODULES = {"onnx": "models.runtimes.onnx", "tflite": "models.runtimes.tflite"}
_REGISTRY: dict[str, type[Runtime]] = {}


class RuntimeUnavailableError(RuntimeError):
    """The runtime's engine is not installed, or the kind is unknown."""


class Runtime(ABC):
    """A loaded model: float32 features in, float32 scores out."""

    kind: ClassVar[str]

    @abstractmethod
    def __init__(self, model_path: Path, *, threads: int) -> None: ...

    @abstractmethod
    def run(self, batch: FloatArray) -> FloatArray:
        """(n, 1, frames, mels) features -> (n, outputs) scores."""


def register(cls: type[Runtime]) -> type[Runtime]:
    _REGISTRY[cls.kind] = cls
    return cls


def runtime_kinds() -> list[str]:
    return sorted(_MODULES)


def runtime_class(kind: str) -> type[Runtime]:
    if kind not in _MODULES:
        raise RuntimeUnavailableError(f"unknown runtime {kind!r}; known: {runtime_kinds()}")
    if kind not in _REGISTRY:
        try:
            importlib.import_module(_MODULES[kind])
        except ImportError as exc:
            raise RuntimeUnavailableError(
                f"runtime {kind!r} is not installed ({exc}); install soundwarden[edge] (onnx) "
                "or soundwarden[tflite]"
            ) from exc
    return _REGISTRY[kind]
