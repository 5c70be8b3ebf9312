"""The log-mel front end: the one definition used by training, evaluation and the edge.

Every bundle records its `FrontendConfig`, and both training and the device compute features
with `LogMel`/`StreamingLogMel` from that record, so there is no train/serve skew. numpy only.

Conventions (chosen to match librosa's `melspectrogram(center=False)` + `power_to_db`):
- frame i covers samples [i*hop, i*hop + n_fft); the `win_length` window sits centred in it;
- power spectrum |rfft|^2, Slaney-style mel filters with Slaney area normalisation;
- 10*log10(max(power, log_floor)) dB, absolute (no top_db clamp relative to the window's peak,
  which would make a frame's value depend on its neighbours and break streaming equality).
A 1 s window at the defaults is 97 frames x 64 bands; a 0.25 s hop adds exactly 25 frames.
"""

from __future__ import annotations

from typing import Literal, Self

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

FloatArray = npt.NDArray[np.float32]
_FRAMES_PER_BLOCK = 32


class FrontendConfig(BaseModel):
    """Front-end parameters, recorded verbatim in every bundle manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: int = Field(16000, description="Sample rate in Hz the audio is resampled to.")
    window_samples: int = Field(
        16000, gt=0, description="Samples in one classification window (16000 = 1 s)."
    )
    n_fft: int = Field(512, gt=0, description="FFT size; also the frame length in samples.")
    win_length: int = Field(400, gt=0, description="Analysis window length, centred in n_fft.")
    hop_length: int = Field(160, gt=0, description="Samples between frame starts (10 ms).")
    window: Literal["hann", "hamming"] = Field(
        "hann", description="Periodic analysis window function."
    )
    n_mels: int = Field(64, gt=0, description="Number of mel bands.")
    fmin: float = Field(50.0, ge=0, description="Lowest mel filter edge in Hz.")
    fmax: float = Field(8000.0, gt=0, description="Highest mel filter edge in Hz.")
    log_floor: float = Field(
        1e-10, gt=0, description="Power floor before the log; 1e-10 is -100 dB."
    )
    normalisation: Literal["none", "window_mean"] = Field(
        "none",
        description="'window_mean' subtracts the window's mean dB, making features invariant to "
        "input gain (a defence against loudness shortcuts).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if self.fmax > self.sample_rate / 2:
            raise ValueError(f"fmax {self.fmax} Hz is above Nyquist ({self.sample_rate / 2} Hz)")
        if self.fmin >= self.fmax:
            raise ValueError(f"fmin {self.fmin} Hz must be below fmax {self.fmax} Hz")
        if self.window_samples < self.n_fft:
            raise ValueError(f"window_samples {self.window_samples} is shorter than n_fft")
        return self

    @property
    def n_frames(self) -> int:
        """Frames in one window."""
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Model input: (batch, channel, frames, mel bands)."""
        return (1, 1, self.n_frames, self.n_mels)


def _hz_to_mel(hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Slaney's scale: linear below 1 kHz, logarithmic above (librosa's htk=False).
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    mel = hz / f_sp
    log_region = hz >= min_log_hz
    mel[log_region] = min_log_hz / f_sp + np.log(hz[log_region] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    hz = mel * f_sp
    log_region = mel >= min_log_mel
    hz[log_region] = min_log_hz * np.exp(logstep * (mel[log_region] - min_log_mel))
    return hz


def mel_filterbank(config: FrontendConfig) -> FloatArray:
    """Triangular Slaney-normalised mel filters, shape (n_fft // 2 + 1, n_mels)."""
    fft_freqs = np.fft.rfftfreq(config.n_fft, d=1.0 / config.sample_rate)
    edges_mel = np.linspace(
        _hz_to_mel(np.array([config.fmin]))[0],
        _hz_to_mel(np.array([config.fmax]))[0],
        config.n_mels + 2,
    )
    edges = _mel_to_hz(edges_mel)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return np.ascontiguousarray(weights.T, dtype=np.float32)


def analysis_window(config: FrontendConfig) -> npt.NDArray[np.float64]:
    """The periodic window of `win_length`, zero-padded to `n_fft` and centred."""
    n = np.arange(config.win_length, dtype=np.float64)
    phase = 2.0 * np.pi * n / config.win_length
    alpha = 0.5 if config.window == "hann" else 0.54
    short = alpha - (1.0 - alpha) * np.cos(phase)
    padded = np.zeros(config.n_fft, dtype=np.float64)
    start = (config.n_fft - config.win_length) // 2
    padded[start : start + config.win_length] = short
    return padded


class LogMel:
    """Batch front end: log-mel frames of any signal, or of one classification window."""

    def __init__(self, config: FrontendConfig | None = None) -> None:
        self.config = config or FrontendConfig()
        # The spectral path runs in float64: numpy's float64 rfft is several times faster
        # than its float32 one here, and the extra precision costs nothing downstream.
        self._window = analysis_window(self.config)
        # Each mel band is a short run of FFT bins. Summing each run with `np.add.reduceat`
        # does the same additions in the same order for every frame, however many frames are
        # computed at once; a BLAS matrix product does not (its blocking depends on the row
        # count), and the streaming form must equal the batch form bit for bit.
        basis = mel_filterbank(self.config)
        bands, bins = np.nonzero(basis.T)
        empty = sorted(set(range(self.config.n_mels)) - set(bands.tolist()))
        if empty:
            raise ValueError(
                f"mel bands {empty} cover no FFT bin: use fewer mel bands or a larger n_fft"
            )
        self._bins = slice(int(bins.min()), int(bins.max()) + 1)
        self._gather = (bins - self._bins.start).astype(np.intp)
        self._weights = basis[bins, bands].astype(np.float64)
        self._band_starts = np.searchsorted(bands, np.arange(self.config.n_mels)).astype(np.intp)

    def frames(self, samples: FloatArray) -> FloatArray:
        """Log-mel dB of every complete frame of a mono float32 signal: (frames, n_mels)."""
        cfg = self.config
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples (1-D), got shape {samples.shape}")
        if samples.shape[0] < cfg.n_fft:
            return np.empty((0, cfg.n_mels), dtype=np.float32)
        framed = np.lib.stride_tricks.sliding_window_view(samples, cfg.n_fft)[:: cfg.hop_length]
        out = np.empty((framed.shape[0], cfg.n_mels), dtype=np.float32)
        # Small blocks keep every temporary under malloc's mmap threshold, so buffers are
        # reused instead of freshly mapped and page-faulted on each call (3x faster here).
        # Every step is row-independent, so blocking does not change a single bit.
        for start in range(0, framed.shape[0], _FRAMES_PER_BLOCK):
            block = framed[start : start + _FRAMES_PER_BLOCK]
            spectrum = np.fft.rfft(block * self._window, axis=-1)[:, self._bins]
            power = spectrum.real**2 + spectrum.imag**2
            mel = np.add.reduceat(power[:, self._gather] * self._weights, self._band_starts, axis=1)
            out[start : start + block.shape[0]] = 10.0 * np.log10(np.maximum(mel, cfg.log_floor))
        return out

    def normalise(self, window_frames: FloatArray) -> FloatArray:
        """Apply the configured per-window normalisation to one window of frames."""
        if self.config.normalisation == "window_mean":
            return window_frames - np.float32(window_frames.mean(dtype=np.float32))
        return window_frames

    def window(self, samples: FloatArray) -> FloatArray:
        """Features of exactly one window of `window_samples` samples: (n_frames, n_mels)."""
        if samples.shape != (self.config.window_samples,):
            raise ValueError(
                f"expected {self.config.window_samples} mono samples, got shape {samples.shape}"
            )
        return self.normalise(self.frames(samples))

    def windows(self, samples: FloatArray, hop_samples: int) -> FloatArray:
        """Features of every complete window of a clip, windows `hop_samples` apart.

        Frames are computed once and shared by overlapping windows; the result for each
        window is identical to `window()` on that slice. Shape (windows, n_frames, n_mels).
        """
        cfg = self.config
        if hop_samples <= 0 or hop_samples % cfg.hop_length:
            raise ValueError(
                f"window hop {hop_samples} must be a positive multiple of hop_length "
                f"{cfg.hop_length}"
            )
        frames = self.frames(samples)
        step = hop_samples // cfg.hop_length
        starts = range(0, frames.shape[0] - cfg.n_frames + 1, step)
        out = np.empty((len(starts), cfg.n_frames, cfg.n_mels), dtype=np.float32)
        for i, start in enumerate(starts):
            out[i] = self.normalise(frames[start : start + cfg.n_frames])
        return out


class StreamingLogMel:
    """Incremental front end for live audio: each push computes only the frames it completes.

    After any sequence of pushes totalling T samples, `window()` equals
    `LogMel.window(signal[T' - window_samples : T'])` where T' is the end of the last complete
    frame; when pushes are whole multiples of `hop_length` (the edge pushes 0.25 s hops) that is
    the last `window_samples` pushed, exactly.
    """

    def __init__(self, config: FrontendConfig | None = None) -> None:
        self._logmel = LogMel(config)
        self.config = self._logmel.config
        self._pending = np.empty(0, dtype=np.float32)
        self._frames = np.zeros((self.config.n_frames, self.config.n_mels), dtype=np.float32)
        self._filled = 0

    @property
    def ready(self) -> bool:
        """True once a full window of frames has been seen."""
        return self._filled >= self.config.n_frames

    def push(self, samples: FloatArray) -> int:
        """Feed mono float32 samples; returns how many new frames were computed."""
        cfg = self.config
        pending = np.concatenate((self._pending, np.asarray(samples, dtype=np.float32)))
        if pending.shape[0] < cfg.n_fft:
            self._pending = pending
            return 0
        count = 1 + (pending.shape[0] - cfg.n_fft) // cfg.hop_length
        new = self._logmel.frames(pending[: (count - 1) * cfg.hop_length + cfg.n_fft])
        self._pending = pending[count * cfg.hop_length :]
        keep = cfg.n_frames
        if count >= keep:
            self._frames[:] = new[-keep:]
        else:
            self._frames[:-count] = self._frames[count:]
            self._frames[-count:] = new
        self._filled = min(keep, self._filled + count)
        return int(count)

    def window(self) -> FloatArray:
        """Features of the latest window (n_frames, n_mels); a copy, safe to keep."""
        if not self.ready:
            raise RuntimeError(
                f"only {self._filled} of {self.config.n_frames} frames seen; wait for `ready`"
            )
        return self._logmel.normalise(self._frames.copy())

    def reset(self) -> None:
        """Forget all audio, e.g. after a gap in capture."""
        self._pending = np.empty(0, dtype=np.float32)
        self._filled = 0
