from __future__ import annotations

import numpy as np
import pytest

from models.audio import load_mono
from models.frontend import FrontendConfig, LogMel, StreamingLogMel
from tests.conftest import CRY_8K_ORIGIN, CRY_FULL_BAND

# Documented parity with librosa (melspectrogram center=False + power_to_db, same parameters),
# all float32 rounding: 1e-3 dB on bins above -80 dB, 0.05 dB on every bin (bins near the
# -100 dB floor, such as above 4 kHz in 8 kHz-origin audio, carry tiny powers whose relative
# rounding shows more in dB). Measured on the fixture cries: 4e-4 dB and 0.012 dB.
LIBROSA_TOLERANCE_DB = 1e-3
LIBROSA_TOLERANCE_NEAR_FLOOR_DB = 0.05
HOP = 4000  # the edge's default 0.25 s window hop


def _librosa_logmel(samples: np.ndarray, cfg: FrontendConfig) -> np.ndarray:
    librosa = pytest.importorskip("librosa")
    power = librosa.feature.melspectrogram(
        y=samples,
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=cfg.window,
        center=False,
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=False,
        norm="slaney",
    )
    return librosa.power_to_db(power, ref=1.0, amin=cfg.log_floor, top_db=None).T


@pytest.mark.parametrize(
    "cfg",
    [
        FrontendConfig(),
        FrontendConfig(n_mels=40, fmin=0.0, fmax=4000.0, window="hamming"),
        FrontendConfig(n_fft=1024, win_length=1024, hop_length=320, n_mels=96),
    ],
    ids=["default", "band-limited-hamming", "long-fft"],
)
@pytest.mark.parametrize("clip", [CRY_FULL_BAND, CRY_8K_ORIGIN], ids=["ios", "android"])
def test_matches_librosa_on_real_cries(cfg: FrontendConfig, clip: object) -> None:
    samples = load_mono(clip)  # type: ignore[arg-type]
    ours = LogMel(cfg).frames(samples)
    theirs = _librosa_logmel(samples, cfg)
    assert ours.shape == theirs.shape
    error = np.abs(ours - theirs)
    assert error[theirs > -80].max() < LIBROSA_TOLERANCE_DB
    assert error.max() < LIBROSA_TOLERANCE_NEAR_FLOOR_DB


def test_window_shape_is_recorded_in_the_config() -> None:
    cfg = FrontendConfig()
    assert cfg.n_frames == 97
    assert cfg.input_shape == (1, 1, 97, 64)
    assert LogMel(cfg).window(np.zeros(16000, dtype=np.float32)).shape == (97, 64)


def test_streaming_hops_equal_the_batch_window_exactly() -> None:
    samples = load_mono(CRY_FULL_BAND)
    batch, stream = LogMel(), StreamingLogMel()
    compared = 0
    for end in range(HOP, len(samples) + 1, HOP):
        assert stream.push(samples[end - HOP : end]) >= 0
        if end >= 16000:
            assert np.array_equal(stream.window(), batch.window(samples[end - 16000 : end]))
            compared += 1
    assert compared == (len(samples) - 16000) // HOP + 1


def test_streaming_with_ragged_chunks_equals_batch_exactly() -> None:
    samples = load_mono(CRY_8K_ORIGIN)[: 3 * 16000]
    stream = StreamingLogMel()
    rng = np.random.default_rng(7)
    pos = 0
    while pos < len(samples):
        size = int(rng.integers(1, 2500))
        stream.push(samples[pos : pos + size])
        pos += size
    assert np.array_equal(stream.window(), LogMel().window(samples[-16000:]))


def test_streaming_hop_computes_only_the_new_frames() -> None:
    stream = StreamingLogMel()
    assert stream.push(np.zeros(16000, dtype=np.float32)) == 97
    assert stream.push(np.zeros(HOP, dtype=np.float32)) == 25


def test_streaming_refuses_a_window_before_one_second_and_after_reset() -> None:
    stream = StreamingLogMel()
    stream.push(np.zeros(8000, dtype=np.float32))
    assert not stream.ready
    with pytest.raises(RuntimeError, match="wait for `ready`"):
        stream.window()
    stream.push(np.zeros(8000, dtype=np.float32))
    assert stream.ready
    stream.reset()
    assert not stream.ready


def test_windows_of_a_clip_equal_each_window_alone() -> None:
    samples = load_mono(CRY_8K_ORIGIN)
    logmel = LogMel()
    windows = logmel.windows(samples, HOP)
    assert windows.shape[0] == (len(samples) - 16000) // HOP + 1
    for i in (0, 5, windows.shape[0] - 1):
        assert np.array_equal(windows[i], logmel.window(samples[i * HOP : i * HOP + 16000]))
    with pytest.raises(ValueError, match="multiple of hop_length"):
        logmel.windows(samples, 1000)


def test_window_mean_normalisation_removes_input_gain() -> None:
    window = load_mono(CRY_FULL_BAND)[16000:32000]
    plain, normalised = LogMel(), LogMel(FrontendConfig(normalisation="window_mean"))
    quiet = window * np.float32(0.05)  # -26 dB
    assert plain.window(quiet).mean() == pytest.approx(plain.window(window).mean() - 26.0, abs=0.1)
    np.testing.assert_allclose(normalised.window(quiet), normalised.window(window), atol=1e-3)


def test_a_tone_lights_up_the_band_that_contains_it() -> None:
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    cfg = FrontendConfig()
    from models.frontend import mel_filterbank

    expected_band = int(mel_filterbank(cfg)[round(1000 * cfg.n_fft / 16000)].argmax())
    assert int(LogMel(cfg).window(tone).mean(axis=0).argmax()) == expected_band


def test_silence_sits_on_the_log_floor() -> None:
    out = LogMel().window(np.zeros(16000, dtype=np.float32))
    assert np.all(out == pytest.approx(-100.0))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"fmax": 9000.0}, "above Nyquist"),
        ({"win_length": 1024}, "exceeds n_fft"),
        ({"fmin": 8000.0}, "must be below fmax"),
        ({"window_samples": 256}, "shorter than n_fft"),
        ({"n_mels": 64, "extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_inconsistent_parameters_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrontendConfig(**changes)  # type: ignore[arg-type]


def test_more_mel_bands_than_fft_bins_can_fill_is_refused() -> None:
    with pytest.raises(ValueError, match="cover no FFT bin"):
        LogMel(FrontendConfig(n_fft=256, win_length=256, n_mels=128, fmin=0.0))


def test_frames_refuses_multichannel_input() -> None:
    with pytest.raises(ValueError, match="mono"):
        LogMel().frames(np.zeros((16000, 2), dtype=np.float32))
