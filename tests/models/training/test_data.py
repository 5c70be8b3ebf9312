from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.audio import level_dbfs, load_mono
from models.training.data import Augmenter, ClipAudio, windows_for
from models.training.recipes import CRY_DETECTOR, Augmentation
from tests.conftest import CRY_FULL_BAND, SPEECH

RATE = 16000


def _high_band_db(x: np.ndarray, above_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    return float(10 * np.log10(spectrum[freqs > above_hz].sum() / spectrum.sum() + 1e-30))


def test_silence_inside_a_positive_clip_is_not_taught_as_a_cry() -> None:
    cry = load_mono(CRY_FULL_BAND)[: 2 * RATE]
    clip = np.concatenate([cry, np.zeros(2 * RATE, dtype=np.float32)])
    clips = [ClipAudio(samples=clip, target=0, split="train", group="g", source="cry/x")]
    starts = [w.start for w in windows_for(clips, "train", CRY_DETECTOR, 0.5, positive=0)]
    # Windows overlapping the 2 s of cry stay; the three all-silent windows after it go.
    assert starts == [0, 8000, 16000, 24000]
    # The same audio as a negative keeps every window: silence is a fine negative.
    clips = [ClipAudio(samples=clip, target=1, split="train", group="g", source="other/x")]
    assert len(windows_for(clips, "train", CRY_DETECTOR, 0.5, positive=0)) == 7


def test_band_limit_removes_the_high_band_like_an_8khz_recording() -> None:
    noise = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    aug = Augmentation(
        band_limit_prob=1.0,
        cutoff_hz=(3800.0, 3800.0),
        mix_prob=0.0,
        gain_db=(0.0, 0.0),
        noise_floor_dbfs=(-120.0, -120.0),
    )
    out = Augmenter(aug, [], RATE)(noise, np.random.default_rng(1), mix=False)
    assert _high_band_db(noise, 4000) > -3
    assert _high_band_db(out, 4000) < -40


def test_mixing_puts_a_negative_under_a_positive_at_the_drawn_snr() -> None:
    cry = load_mono(CRY_FULL_BAND)[:RATE] * np.float32(0.1)  # headroom: nothing clips
    speech = np.resize(load_mono(SPEECH), RATE)
    aug = Augmentation(
        mix_prob=1.0,
        snr_db=(0.0, 0.0),
        band_limit_prob=0.0,
        gain_db=(0.0, 0.0),
        noise_floor_dbfs=(-120.0, -120.0),
    )
    out = Augmenter(aug, [speech], RATE)(cry, np.random.default_rng(2), mix=True)
    added = out - cry
    assert level_dbfs(added) == pytest.approx(level_dbfs(cry), abs=0.5)


def test_augmentation_is_reproducible_from_the_seed() -> None:
    cry = load_mono(CRY_FULL_BAND)[:RATE]
    augmenter = Augmenter(Augmentation(), [cry[::-1].copy()], RATE)
    first = augmenter(cry, np.random.default_rng(5), mix=True)
    second = augmenter(cry, np.random.default_rng(5), mix=True)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, augmenter(cry, np.random.default_rng(6), mix=True))


def test_source_balanced_weights_make_every_class_and_source_count_alike() -> None:
    from models.training.data import Window
    from models.training.trainer import source_balanced_weights

    silence = np.zeros(RATE, dtype=np.float32)
    clips = [
        ClipAudio(samples=silence, target=0, split="train", group="a", source="cry/hungry"),
        ClipAudio(samples=silence, target=1, split="train", group="b", source="bg/speech"),
        ClipAudio(samples=silence, target=1, split="train", group="c", source="bg/music"),
    ]
    windows = [Window(0, 0)] * 4 + [Window(1, 0)] * 6 + [Window(2, 0)] * 2
    weights = source_balanced_weights(clips, windows)
    cry, speech, music = weights[:4].sum(), weights[4:10].sum(), weights[10:].sum()
    assert cry == pytest.approx(speech + music)
    assert speech == pytest.approx(music)


def test_spec_augment_blanks_only_narrow_bands_and_stretches_with_the_window_mean() -> None:
    from models.frontend import FrontendConfig, LogMel

    logmel = LogMel(FrontendConfig(normalisation="window_mean"))
    cry = load_mono(CRY_FULL_BAND)
    feats = np.stack([logmel.window(cry[i * RATE : (i + 1) * RATE]) for i in range(4)])
    aug = Augmentation(freq_masks=1, freq_mask_bins=8, time_masks=1, time_mask_frames=12)
    masked = Augmenter(aug, [], RATE).mask(feats, np.random.default_rng(3))
    for before, after in zip(feats, masked, strict=True):
        changed = before != after
        # Whole mel bands and whole frames are blanked, to the window's mean, nothing else.
        bands = np.flatnonzero(changed.all(axis=0))
        frames = np.flatnonzero(changed.all(axis=1))
        assert len(bands) <= 8 and len(frames) <= 12
        assert len(bands) + len(frames) > 0
        outside = np.ones_like(changed)
        outside[:, bands] = False
        outside[frames] = False
        assert not changed[outside].any()
        np.testing.assert_allclose(after[changed], before.mean(), rtol=1e-6)


def test_a_missing_extra_dataset_says_how_to_make_it(tmp_path: Path) -> None:
    from models.training.data import load_clips
    from models.training.recipes import CRY_DETECTOR_EXTRA_NEGATIVES

    for name in ("cry", "background", "events", "machine"):
        (tmp_path / name).mkdir()
    with pytest.raises(ValueError, match=r"debian_sounds/.*scripts/extra_negatives\.py"):
        load_clips(tmp_path, CRY_DETECTOR_EXTRA_NEGATIVES)
