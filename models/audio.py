"""Audio loading and sample conversion shared by the edge and training.

numpy, soundfile (libsndfile) and soxr only, so the Raspberry Pi profile stays light. Every
error names the file and says why it was refused: a training run over two thousand clips, or a
clip uploaded by a device, must point at the bad one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

TARGET_SAMPLE_RATE = 16000
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})

# Limits that keep a corrupt header or a hostile upload from allocating gigabytes.
MIN_SAMPLE_RATE = 4000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 32
DEFAULT_MAX_DURATION_S = 3600.0
# A window this far below its clip's loudest, or below the floor, is silence between sounds.
SILENCE_BELOW_PEAK_DB = 20.0
SILENCE_FLOOR_DBFS = -60.0

_WAV_DATA_CLAIM = re.compile(r"^data : (?P<declared>\d+) \(should be (?P<actual>\d+)\)", re.M)
_STREAMED_WAV_SIZE = 0x7FFF0000

FloatArray = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]


class AudioError(ValueError):
    """A file that cannot be used as audio. The message says which file and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class UnreadableAudioError(AudioError):
    """Not a decodable WAV/FLAC/OGG file (wrong format, garbage, permission)."""


class EmptyAudioError(AudioError):
    """A valid container holding no samples."""


class TruncatedAudioError(AudioError):
    """The header promises more audio than the file holds (an interrupted copy or upload)."""


class AbsurdAudioError(AudioError):
    """Parameters no microphone produces, or beyond the configured limits."""


@dataclass(frozen=True)
class Audio:
    """Decoded audio: float32 samples in [-1, 1], shape (frames, channels), and what the file
    held them as (libsndfile's names, e.g. format "FLAC", subtype "PCM_16")."""

    samples: FloatArray
    sample_rate: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return float(self.samples.shape[0] / self.sample_rate)


def read_audio(path: str | Path, *, max_duration_s: float = DEFAULT_MAX_DURATION_S) -> Audio:
    """Decode a WAV, FLAC or OGG file as it is stored (all channels, native rate)."""
    path = Path(path)
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise UnreadableAudioError(path, f"not a readable audio file ({exc})") from exc
    with handle:
        _check_header(path, handle, max_duration_s)
        try:
            samples = handle.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, OSError) as exc:
            raise TruncatedAudioError(path, f"decoding failed part-way ({exc})") from exc
        if samples.shape[0] < handle.frames:
            raise TruncatedAudioError(
                path, f"header declares {handle.frames} frames but only {samples.shape[0]} decode"
            )
        sample_rate, container, subtype = handle.samplerate, handle.format, handle.subtype
    if not np.isfinite(samples).all():
        raise AbsurdAudioError(path, "samples contain NaN or infinity")
    return Audio(samples=samples, sample_rate=int(sample_rate), format=container, subtype=subtype)


def _check_header(path: Path, info: sf.SoundFile, max_duration_s: float) -> None:
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AbsurdAudioError(
            path,
            f"sample rate {info.samplerate} Hz is outside {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz",
        )
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AbsurdAudioError(path, f"{info.channels} channels (at most {MAX_CHANNELS})")
    if info.frames == 0:
        raise EmptyAudioError(path, "the file holds no decodable audio samples")
    duration = info.frames / info.samplerate
    if duration > max_duration_s:
        raise AbsurdAudioError(
            path, f"{duration:.1f} s long, over the {max_duration_s:.0f} s limit"
        )
    # libsndfile sizes a WAV's data from the file itself and only logs the header's claim;
    # a short file is an interrupted copy, which must not pass as a shorter clip. Streamed
    # WAVs (arecord, ffmpeg to a pipe) declare 0 or ~2 GiB because the length was unknown.
    claim = _WAV_DATA_CLAIM.search(info.extra_info) if info.format == "WAV" else None
    if claim and 0 < int(claim["declared"]) < _STREAMED_WAV_SIZE:
        raise TruncatedAudioError(
            path,
            f"the WAV header declares {claim['declared']} bytes of audio "
            f"but the file holds {claim['actual']}",
        )


def to_mono(samples: FloatArray) -> FloatArray:
    """Average channels: (frames, channels) or (frames,) -> (frames,)."""
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return np.ascontiguousarray(samples[:, 0])
    mono: FloatArray = samples.mean(axis=1, dtype=np.float32)
    return mono


def resample(samples: FloatArray, from_rate: int, to_rate: int) -> FloatArray:
    """Band-limited resampling (soxr, high quality): nothing above the new Nyquist aliases."""
    if from_rate == to_rate:
        return samples
    out: FloatArray = soxr.resample(samples, from_rate, to_rate, quality="HQ")
    return out.astype(np.float32, copy=False)


def load_mono(
    path: str | Path,
    sample_rate: int = TARGET_SAMPLE_RATE,
    *,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
) -> FloatArray:
    """The one way every component reads a clip: decode, downmix, resample to `sample_rate`."""
    audio = read_audio(path, max_duration_s=max_duration_s)
    return resample(to_mono(audio.samples), audio.sample_rate, sample_rate)


def int16_to_float(samples: Int16Array) -> FloatArray:
    """PCM int16 -> float32 in [-1, 1)."""
    return samples.astype(np.float32) / np.float32(32768.0)


def float_to_int16(samples: FloatArray) -> Int16Array:
    """float -> PCM int16, clipping out-of-range samples instead of wrapping around."""
    scaled = np.rint(np.asarray(samples, dtype=np.float32) * np.float32(32768.0))
    pcm: Int16Array = np.clip(scaled, -32768, 32767).astype(np.int16)
    return pcm


def level_dbfs(samples: FloatArray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * float(np.log10(rms)) if rms > 0 else float("-inf")


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Starts of the windows covering a clip; a clip shorter than one window gets one window."""
    if n_samples <= window:
        return [0]
    return list(range(0, n_samples - window + 1, hop))


def low_pass(samples: FloatArray, rate: int, cutoff_hz: float) -> FloatArray:
    """`samples` with nothing above `cutoff_hz`, same length: down to twice the cutoff and back
    up, soxr's anti-alias filter being the low-pass, so the result sounds like a recording made
    at that rate (an 8 kHz phone upload for 4 kHz)."""
    low_rate = int(2 * cutoff_hz)
    return cut(resample(resample(samples, rate, low_rate), low_rate, rate), 0, samples.shape[0])


def cut(samples: FloatArray, start: int, window: int) -> FloatArray:
    """Exactly `window` samples from `start`, zero-padded past the end."""
    piece = samples[start : start + window]
    if piece.shape[0] == window:
        return piece
    return np.pad(piece, (0, window - piece.shape[0]))


def energy_gate(
    samples: FloatArray, starts: list[int], window: int, *, below_peak_db: float, min_dbfs: float
) -> npt.NDArray[np.bool_]:
    """Which windows carry sound: within `below_peak_db` of the clip's loudest window and
    above `min_dbfs`. Training and evaluation use it to tell a cry from the silence around it."""
    levels = np.array([level_dbfs(cut(samples, s, window)) for s in starts])
    gate: npt.NDArray[np.bool_] = levels >= max(levels.max() - below_peak_db, min_dbfs)
    return gate


def is_audio_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")
    )
