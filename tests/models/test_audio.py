from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models.audio import (
    AbsurdAudioError,
    EmptyAudioError,
    TruncatedAudioError,
    UnreadableAudioError,
    float_to_int16,
    int16_to_float,
    level_dbfs,
    load_mono,
    read_audio,
    resample,
    to_mono,
)
from tests.conftest import CRY_FULL_BAND, SPEECH


def _tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _band_energy_db(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = spectrum[(freqs >= lo) & (freqs < hi)].sum()
    return float(10 * np.log10(band / spectrum.sum() + 1e-30))


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_real_recording_loads_as_16k_mono_in_every_container(tmp_path: Path, fmt: str) -> None:
    reference = load_mono(CRY_FULL_BAND)
    converted = tmp_path / f"cry.{fmt.lower()}"
    sf.write(converted, reference, 16000, format=fmt)
    loaded = load_mono(converted)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert abs(len(loaded) - len(reference)) <= 16000 * 0.01
    # Lossless containers give the samples back; Vorbis keeps the sound, not the bits.
    n = min(len(loaded), len(reference))
    corr = np.corrcoef(loaded[:n], reference[:n])[0, 1]
    assert corr > (0.9999 if fmt != "OGG" else 0.95)


def test_stereo_44k1_is_downmixed_and_resampled(tmp_path: Path) -> None:
    left, right = _tone(440, 44100), _tone(440, 44100, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    mono = load_mono(path)
    assert len(mono) == 16000
    assert np.sqrt(np.mean(mono[1000:-1000] ** 2)) == pytest.approx(0.375 / np.sqrt(2), rel=0.01)


def test_downsampling_removes_content_above_the_new_nyquist() -> None:
    # A 10 kHz tone at 44.1 kHz would fold to 6 kHz under naive decimation.
    out = resample(_tone(10000, 44100, amp=0.9), 44100, 16000)
    assert level_dbfs(out[2000:-2000]) < -70


def test_upsampling_8k_audio_adds_no_images_above_4khz() -> None:
    out = resample(_tone(3000, 8000), 8000, 16000)
    assert _band_energy_db(out[1000:-1000], 16000, 4100, 8000) < -70
    assert _band_energy_db(out[1000:-1000], 16000, 2900, 3100) > -0.1


def test_to_mono_keeps_mono_and_averages_channels() -> None:
    x = np.array([[1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(to_mono(x), [0.5, 0.5])
    np.testing.assert_array_equal(to_mono(x[:, 0]), [1.0, 0.5])


def test_int16_conversion_clips_instead_of_wrapping() -> None:
    out = float_to_int16(np.array([1.5, -1.5, 0.5, -1.0], dtype=np.float32))
    np.testing.assert_array_equal(out, [32767, -32768, 16384, -32768])
    pcm = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    np.testing.assert_array_equal(float_to_int16(int16_to_float(pcm)), pcm)


def test_level_of_a_full_scale_sine_is_minus_3_dbfs() -> None:
    assert level_dbfs(_tone(1000, 16000, amp=1.0)) == pytest.approx(-3.01, abs=0.01)
    assert level_dbfs(np.zeros(100, dtype=np.float32)) == float("-inf")


def _wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    path_data = samples.astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(path_data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", len(path_data)) + path_data


def test_garbage_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"these are not the samples you are looking for" * 10)
    with pytest.raises(UnreadableAudioError, match="notes.wav: not a readable audio file"):
        read_audio(bad)


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableAudioError, match="nothing.wav"):
        read_audio(tmp_path / "nothing.wav")


def test_header_only_wav_is_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(_wav_bytes(np.zeros(0, dtype=np.int16)))
    with pytest.raises(EmptyAudioError, match="empty.wav: the file holds no decodable audio"):
        read_audio(empty)


def test_wav_cut_short_is_truncated(tmp_path: Path) -> None:
    data = _wav_bytes((np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16))
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedAudioError, match="cut.wav: the WAV header declares 32000 bytes"):
        read_audio(cut)


def test_flac_cut_short_is_truncated(tmp_path: Path) -> None:
    full = tmp_path / "full.flac"
    sf.write(full, load_mono(CRY_FULL_BAND), 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(TruncatedAudioError, match="cut.flac"):
        read_audio(cut)


def test_streamed_wav_with_unknown_length_is_accepted(tmp_path: Path) -> None:
    # arecord and ffmpeg writing to a pipe cannot know the length and leave ~2 GiB in the header.
    samples = (np.random.default_rng(1).standard_normal(8000) * 3000).astype(np.int16)
    data = bytearray(_wav_bytes(samples))
    data[40:44] = struct.pack("<I", 0x7FFFFFFF)
    streamed = tmp_path / "streamed.wav"
    streamed.write_bytes(bytes(data))
    assert read_audio(streamed).samples.shape == (8000, 1)


def test_absurd_sample_rate_is_refused(tmp_path: Path) -> None:
    slow = tmp_path / "slow.wav"
    slow.write_bytes(_wav_bytes(np.ones(100, dtype=np.int16), rate=100))
    with pytest.raises(AbsurdAudioError, match="slow.wav: sample rate 100 Hz is outside"):
        read_audio(slow)


def test_over_long_file_is_refused_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(AbsurdAudioError, match=r"over the 1 s limit"):
        read_audio(CRY_FULL_BAND, max_duration_s=1.0)


def test_nan_samples_are_refused(tmp_path: Path) -> None:
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AbsurdAudioError, match="NaN"):
        read_audio(nan)


def test_short_speech_clip_keeps_its_length() -> None:
    audio = read_audio(SPEECH)
    assert audio.sample_rate == 16000
    assert audio.duration_s == pytest.approx(0.224, abs=0.01)


def test_low_pass_keeps_the_length_and_nothing_above_the_cutoff() -> None:
    from models.audio import low_pass

    noise = np.random.default_rng(0).standard_normal(16001).astype(np.float32) * 0.1
    out = low_pass(noise, 16000, 3000.0)
    power = np.abs(np.fft.rfft(out)) ** 2
    freqs = np.fft.rfftfreq(out.shape[0], 1 / 16000)
    assert out.shape == noise.shape
    assert power[freqs > 3100].sum() < 1e-3 * power.sum()
    assert power[freqs < 2500].sum() > 0.8 * power.sum()  # flat noise: 2.45 of its 3 kHz
