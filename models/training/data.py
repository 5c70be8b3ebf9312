"""Training windows from dataset folders (numpy only).

Clips are read once through `models.audio.load_mono`; 1 s windows are cut at a hop, positives
are energy-gated (a window much quieter than its clip's loudest is silence between cries, not a
cry, and is never taught as one), and training windows are augmented on the fly against the
shortcuts the datasets carry: gain (loudness), random low-pass (8 kHz-origin vs full band),
negatives mixed underneath positives at random SNR (a cry over speech or music), time shift, a
noise floor (no digital silence to key on), and SpecAugment masks on the training features.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from models.audio import cut, energy_gate, level_dbfs, load_mono, low_pass, window_starts
from models.dataset import read_dataset
from models.frontend import LogMel
from models.training.recipes import Augmentation, Recipe

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ClipAudio:
    samples: FloatArray
    target: int
    split: str
    group: str
    source: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    clip: int
    start: int


def load_clips(data_root: Path, recipe: Recipe) -> list[ClipAudio]:
    """Every clip the recipe names, decoded to 16 kHz mono, with its split and group."""
    rate = recipe.features.sample_rate
    clips: list[ClipAudio] = []
    for source in recipe.sources:  # before minutes of decoding the others
        if source.made_by and not (data_root / source.dataset).is_dir():
            raise ValueError(
                f"recipe {recipe.name!r} trains on {source.dataset}/, which is not in "
                f"{data_root}; make it with: {source.made_by}"
            )
    for source in recipe.sources:
        dataset = read_dataset(data_root / source.dataset)
        if not source.allow_group_leak:
            dataset.require_disjoint_groups()
        chosen = [c for c in dataset.clips if source.labels is None or c.label in source.labels]
        target = recipe.labels.index(source.target)
        for clip in tqdm(chosen, desc=f"{source.dataset} -> {source.target}", unit="clip"):
            if clip.split is None or clip.group is None:
                raise ValueError(f"{clip.path}: training needs split and group in manifest.csv")
            clips.append(
                ClipAudio(
                    samples=load_mono(clip.path, rate),
                    target=target,
                    split=clip.split,
                    group=f"{source.dataset}:{clip.group}",
                    source=f"{source.dataset}/{clip.label}",
                    meta=clip.extra,
                )
            )
    return clips


def windows_for(
    clips: list[ClipAudio], split: str, recipe: Recipe, hop_s: float, positive: int
) -> list[Window]:
    """Windows of one split; positive clips keep only windows that pass the energy gate."""
    window = recipe.features.window_samples
    hop = int(hop_s * recipe.features.sample_rate)
    out = []
    for index, clip in enumerate(clips):
        if clip.split != split:
            continue
        starts = window_starts(clip.samples.shape[0], window, hop)
        if clip.target == positive:
            keep = energy_gate(
                clip.samples,
                starts,
                window,
                below_peak_db=recipe.energy_gate_db,
                min_dbfs=recipe.min_level_dbfs,
            )
            starts = [s for s, k in zip(starts, keep, strict=True) if k]
        out += [Window(index, s) for s in starts]
    return out


class Augmenter:
    """Applies `Augmentation` to one window at a time, reproducibly from a seeded generator."""

    def __init__(self, aug: Augmentation, negatives: list[FloatArray], rate: int) -> None:
        self.aug = aug
        self.negatives = negatives
        self.rate = rate

    def __call__(self, x: FloatArray, rng: np.random.Generator, mix: bool) -> FloatArray:
        aug = self.aug
        x = x.astype(np.float32, copy=True)
        if mix and self.negatives and rng.random() < aug.mix_prob:
            x = self._mix(x, self.negatives[int(rng.integers(len(self.negatives)))], rng)
        if rng.random() < aug.band_limit_prob:
            x = low_pass(x, self.rate, float(rng.uniform(*aug.cutoff_hz)))
        x *= np.float32(10 ** (rng.uniform(*aug.gain_db) / 20))
        floor = np.float32(10 ** (rng.uniform(*aug.noise_floor_dbfs) / 20))
        x += rng.standard_normal(x.shape[0], dtype=np.float32) * floor
        return np.clip(x, -1.0, 1.0)

    def mask(self, feats: FloatArray, rng: np.random.Generator) -> FloatArray:
        """SpecAugment on a batch of features (n, frames, mels): a copy with random mel bands
        and stretches of frames set to each window's mean, so no single band or moment
        decides; `feats` itself when the masks are off."""
        aug = self.aug
        if aug.freq_masks == aug.time_masks == 0:
            return feats
        feats = feats.copy()
        frames, mels = feats.shape[1:]
        for f in feats:
            fill = f.mean()
            for _ in range(aug.freq_masks):
                width = int(rng.integers(0, aug.freq_mask_bins + 1))
                low = int(rng.integers(0, mels - width + 1))
                f[:, low : low + width] = fill
            for _ in range(aug.time_masks):
                width = int(rng.integers(0, aug.time_mask_frames + 1))
                low = int(rng.integers(0, frames - width + 1))
                f[low : low + width] = fill
        return feats

    def _mix(self, x: FloatArray, noise: FloatArray, rng: np.random.Generator) -> FloatArray:
        snr = rng.uniform(*self.aug.snr_db)
        x_level, n_level = level_dbfs(x), level_dbfs(noise)
        if not (np.isfinite(x_level) and np.isfinite(n_level)):
            return x
        gain = 10 ** ((x_level - snr - n_level) / 20)
        return (x + noise * np.float32(gain)).astype(np.float32)


def features_of(
    clips: list[ClipAudio],
    windows: list[Window],
    logmel: LogMel,
    *,
    augmenter: Augmenter | None = None,
    rng: np.random.Generator | None = None,
    positive: int = 0,
    desc: str = "features",
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Features (n, frames, mels) and targets (n,) of `windows`, augmented when asked."""
    cfg = logmel.config
    shift = int((augmenter.aug.shift_s if augmenter else 0.0) * cfg.sample_rate)
    feats = np.empty((len(windows), cfg.n_frames, cfg.n_mels), dtype=np.float32)
    targets = np.empty(len(windows), dtype=np.int64)
    for i, w in enumerate(tqdm(windows, desc=desc, unit="win", leave=False)):
        clip = clips[w.clip]
        start = w.start
        if augmenter is not None and rng is not None and shift:
            start = int(np.clip(start + rng.integers(-shift, shift + 1), 0, None))
        x = cut(clip.samples, start, cfg.window_samples)
        if augmenter is not None and rng is not None:
            x = augmenter(x, rng, mix=True)
        feats[i] = logmel.window(x)
        targets[i] = clip.target
    return feats, targets


def training_augmenter(
    clips: list[ClipAudio], train_windows: list[Window], recipe: Recipe
) -> Augmenter:
    """A run's augmenter: the negatives it mixes in are the run's training negative windows."""
    positive = recipe.labels.index(recipe.positive)
    negatives = [w for w in train_windows if clips[w.clip].target != positive]
    pool = negative_pool(clips, negatives, recipe.features.window_samples)
    return Augmenter(recipe.augmentation, pool, recipe.features.sample_rate)


def validation_features(
    clips: list[ClipAudio], recipe: Recipe, augmenter: Augmenter, logmel: LogMel
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """The `val` windows at the edge's hop, clean and augmented once with a fixed seed
    (mixtures, band limits), so selection rewards robustness, not only the easy case:
    (clean features, augmented features, targets)."""
    windows = windows_for(
        clips, "val", recipe, recipe.eval_hop_s, recipe.labels.index(recipe.positive)
    )
    clean, targets = features_of(clips, windows, logmel, desc="val features")
    rng = np.random.default_rng(recipe.seed + 1)
    augmented, _ = features_of(
        clips, windows, logmel, augmenter=augmenter, rng=rng, desc="val augmented"
    )
    return clean, augmented, targets


def subsample(windows: list[Window], limit: int | None, rng: np.random.Generator) -> list[Window]:
    """At most `limit` windows, drawn without replacement, in their original order."""
    if limit is None or len(windows) <= limit:
        return windows
    return [windows[i] for i in sorted(rng.choice(len(windows), limit, replace=False))]


def negative_pool(clips: list[ClipAudio], windows: list[Window], window: int) -> list[FloatArray]:
    """Training-split negative windows to mix under other windows."""
    return [cut(clips[w.clip].samples, w.start, window) for w in windows]


def batches(n: int, size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.int64]]:
    """Shuffled batches; a last batch under half size is dropped (it destabilises batch norm)."""
    order = rng.permutation(n)
    for start in range(0, n, size):
        if n - start >= size // 2 or start == 0:
            yield order[start : start + size]
