"""Pictures of a clip for the console: a spectrogram PNG and waveform peaks. numpy + Pillow.

The mel view uses the bundle front end's filter bank (models.frontend), so it shows the bands
the detector hears; the linear view shows every FFT bin.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from models.frontend import FrontendConfig, mel_filterbank

FloatArray = npt.NDArray[np.float32]
Scale = Literal["mel", "linear"]
WindowName = Literal["hann", "hamming", "blackman", "bartlett", "rectangular", "kaiser"]

# Kaiser's beta: 8.6 trades a main lobe as wide as Blackman's for lower side lobes.
KAISER_BETA = 8.6
# Periodic (DFT-even) windows: numpy builds symmetric ones, so build n + 1 and drop the last.
WINDOWS: dict[WindowName, Callable[[int], npt.NDArray[np.float64]]] = {
    "hann": lambda n: np.hanning(n + 1)[:-1],
    "hamming": lambda n: np.hamming(n + 1)[:-1],
    "blackman": lambda n: np.blackman(n + 1)[:-1],
    "bartlett": lambda n: np.bartlett(n + 1)[:-1],
    "rectangular": lambda n: np.ones(n),
    "kaiser": lambda n: np.kaiser(n + 1, KAISER_BETA)[:-1],
}
# Wider than any screen: longer clips get neighbouring frames merged (their maximum, so a
# click shorter than a column still shows).
MAX_COLUMNS = 2048
DYNAMIC_RANGE_DB = 80.0
POWER_FLOOR = 1e-10  # -100 dB: digital silence maps to the colormap's dark end
_FRAMES_PER_BLOCK = 256  # bounds the temporaries for long clips and large FFTs

# Viridis (perceptually uniform, readable in greyscale and by most colour-blind people),
# sampled at 17 points; interpolated to 256 entries below.
_VIRIDIS = (
    (0.267, 0.005, 0.329),
    (0.282, 0.095, 0.417),
    (0.279, 0.175, 0.483),
    (0.259, 0.252, 0.525),
    (0.230, 0.322, 0.546),
    (0.199, 0.388, 0.555),
    (0.173, 0.449, 0.558),
    (0.149, 0.508, 0.557),
    (0.128, 0.567, 0.551),
    (0.121, 0.626, 0.533),
    (0.158, 0.684, 0.502),
    (0.246, 0.739, 0.452),
    (0.369, 0.789, 0.383),
    (0.516, 0.831, 0.294),
    (0.678, 0.864, 0.190),
    (0.846, 0.887, 0.100),
    (0.993, 0.906, 0.144),
)


def _colormap() -> npt.NDArray[np.uint8]:
    anchors = np.array(_VIRIDIS)
    at = np.linspace(0.0, 1.0, 256)
    stops = np.linspace(0.0, 1.0, len(anchors))
    table = np.stack([np.interp(at, stops, anchors[:, c]) for c in range(3)], axis=1)
    return np.round(table * 255).astype(np.uint8)


COLORMAP = _colormap()


def hop_for(n_fft: int, overlap: float) -> int:
    return max(1, round(n_fft * (1.0 - overlap)))


def spectrogram_db(
    samples: FloatArray,
    sample_rate: int,
    *,
    n_fft: int,
    overlap: float,
    window: WindowName,
    scale: Scale,
) -> FloatArray:
    """Power in dB, shape (rows, columns): low frequencies in the last row, time left to right.

    Frames are centred (the signal is zero-padded by n_fft / 2), so column i sits at
    i * hop samples and the picture spans the clip exactly, lining up with the waveform.
    """
    hop = hop_for(n_fft, overlap)
    padded = np.pad(samples.astype(np.float64), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    merge = -(-frames.shape[0] // MAX_COLUMNS)  # frames per column, rounded up
    taper = WINDOWS[window](n_fft)
    basis = None
    if scale == "mel":
        # The detector's bands (models.frontend defaults); only the FFT size is the viewer's.
        config = FrontendConfig(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=n_fft,
            window_samples=max(n_fft, sample_rate),
            fmax=min(FrontendConfig().fmax, sample_rate / 2),
        )
        basis = mel_filterbank(config).astype(np.float64)
    columns = []
    step = merge * _FRAMES_PER_BLOCK  # a multiple of `merge`: no column straddles two blocks
    for start in range(0, frames.shape[0], step):
        spectrum = np.fft.rfft(frames[start : start + step] * taper, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        if basis is not None:
            power = power @ basis
        columns.append(np.maximum.reduceat(power, np.arange(0, power.shape[0], merge), axis=0))
    power = np.concatenate(columns)
    return (10.0 * np.log10(np.maximum(power, POWER_FLOOR))).T[::-1].astype(np.float32)


def to_png(db: FloatArray) -> bytes:
    """The top DYNAMIC_RANGE_DB of the picture through the colormap, as PNG bytes."""
    top = max(float(db.max()), 10.0 * np.log10(POWER_FLOOR) + DYNAMIC_RANGE_DB)
    level = np.clip((db - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    rgb = COLORMAP[np.round(level * 255).astype(np.uint8)]
    out = io.BytesIO()
    # Level 1: a third of the default's encoding time for a few percent more bytes.
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def peaks(samples: FloatArray, columns: int) -> tuple[FloatArray, FloatArray]:
    """The lowest and highest sample in each of `columns` equal stretches of the clip."""
    starts = np.linspace(0, samples.shape[0], columns, endpoint=False).astype(np.intp)
    return np.minimum.reduceat(samples, starts), np.maximum.reduceat(samples, starts)
