"""Reference windows: a bundle's proof that a device computes what the builder computed.

Every bundle made by training carries `reference.npz` (role `reference`): a few 1 s windows of
audio and, for each runtime file of the bundle, the scores that file gave them when the bundle
was written. A device about to install the bundle runs the same audio through its own front end
and runtime and compares (`check_reference`): a corrupt or mis-converted file, a runtime that
cannot execute it, or a front end that differs from the builder's shows up as a mismatch or as
non-finite scores before the model ever hears the room.

The windows are synthetic and deterministic (noise at three levels, a tone, a glide with
harmonics), so any bundle can carry them without a licence question. Loaded with
`allow_pickle=False`: the file crosses the network and must never run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.audio import Int16Array, float_to_int16, int16_to_float
from models.bundle import Bundle, FileRole
from models.frontend import FrontendConfig, LogMel
from models.inference import BundleModel, InferenceError
from models.runtimes import RuntimeUnavailableError, runtime_class

REFERENCE_NAME = "reference.npz"
RUNTIME_ROLES: tuple[FileRole, ...] = ("onnx", "onnx_float", "tflite", "tflite_float")
TOLERANCE = 0.05
"""Largest allowed score difference. The same INT8 file gives the same scores to ~1e-6 on one
machine; other CPUs (ARM vs x86 kernels) move a score by far less than this, while a wrong file
or front end moves it by much more."""


class ReferenceMismatchError(InferenceError):
    """The model's scores on the bundle's reference windows differ from the builder's."""


def reference_audio(config: FrontendConfig) -> Int16Array:
    """(5, window_samples) 16-bit PCM: quiet noise, a loud noise burst, a tone, a harmonic
    glide, and the glide over medium noise."""
    n, rate = config.window_samples, config.sample_rate
    t = np.arange(n) / rate
    rng = np.random.default_rng(20261121)
    glide = np.sin(2 * np.pi * np.cumsum(np.linspace(350.0, 600.0, n)) / rate)
    glide = 0.3 * (glide + 0.5 * glide**2 - 0.25) * np.hanning(n)
    burst = np.zeros(n)
    burst[n // 2 : n // 2 + n // 8] = 0.3 * rng.standard_normal(n // 8)
    windows = [
        0.001 * rng.standard_normal(n),
        burst,
        0.2 * np.sin(2 * np.pi * 1000.0 * t),
        glide,
        glide + 0.01 * rng.standard_normal(n),
    ]
    return float_to_int16(np.stack(windows).astype(np.float32))


def write_reference(
    path: Path, config: FrontendConfig, files: dict[str, tuple[FileRole, Path]]
) -> Path:
    """Score the reference audio with every runtime file in `files` ({name: (role, path)})
    and save `path`. A runtime missing on this machine is left out (a device using it then
    refuses the bundle, saying so)."""
    pcm = reference_audio(config)
    logmel = LogMel(config)
    features = np.stack([logmel.window(int16_to_float(w)) for w in pcm])[:, None]
    scores = {}
    for role, file in files.values():
        if role not in RUNTIME_ROLES:
            continue
        kind = role.removesuffix("_float")
        try:
            runtime = runtime_class(kind)(file, threads=1)
        except RuntimeUnavailableError:
            continue
        scores[f"scores_{role}"] = runtime.run(features).astype(np.float32)
    np.savez_compressed(path, audio=pcm, **scores)  # type: ignore[arg-type]
    return path


def check_reference(bundle: Bundle, model: BundleModel) -> float:
    """Run `model` (built from `bundle`) on the bundle's reference windows; returns the largest
    score difference. Raises ReferenceMismatchError (or InferenceError for NaN scores)."""
    role = model.runtime_kind if model.precision == "int8" else f"{model.runtime_kind}_float"
    with np.load(bundle.path("reference"), allow_pickle=False) as data:
        pcm = np.asarray(data["audio"])
        key = f"scores_{role}"
        if key not in data:
            have = sorted(k.removeprefix("scores_") for k in data if k.startswith("scores_"))
            raise ReferenceMismatchError(f"the reference has no scores for {role} (has {have})")
        expected = np.asarray(data[key], dtype=np.float32)
    if pcm.dtype != np.int16 or pcm.ndim != 2:
        raise ReferenceMismatchError(f"reference audio is {pcm.dtype} {pcm.shape}, not 16-bit PCM")
    if pcm.shape[1] != model.manifest.features.window_samples:
        raise ReferenceMismatchError(f"reference windows have {pcm.shape[1]} samples")
    features = np.stack([model.logmel.window(int16_to_float(w)) for w in pcm])
    actual = model.scores(features)  # InferenceError for NaN or a wrong shape
    if actual.shape != expected.shape:
        raise ReferenceMismatchError(
            f"reference scores have shape {expected.shape}, the model gives {actual.shape}"
        )
    worst = float(np.abs(actual - expected).max())
    if worst > TOLERANCE:
        raise ReferenceMismatchError(
            f"scores on the reference windows differ from the builder's by up to {worst:.3f} "
            f"(tolerance {TOLERANCE})"
        )
    return worst
