"""scripts/telephone_view.py: validation clips only, and the 8 kHz copies really are narrowband."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from tests.scripts import load_script


def _dataset(root: Path, rows: list[tuple[str, str, str]], rng: np.random.Generator) -> None:
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "group"])
        for path, label, split in rows:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            noise = (0.1 * rng.standard_normal(16000)).astype(np.float32)
            sf.write(root / path, noise, 16000, "PCM_16")
            writer.writerow([path, label, split, f"g-{Path(path).stem}"])


def _share_above(samples: np.ndarray, hz: float) -> float:
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.shape[0], 1 / 16000)
    return float(power[freqs > hz].sum() / power.sum())


def test_only_validation_clips_and_the_telephone_copy_has_nothing_above_4_khz(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    view, extra, out = tmp_path / "view", tmp_path / "extra", tmp_path / "out"
    view.mkdir(), extra.mkdir()
    _dataset(
        view,
        [
            ("cry/a.wav", "cry", "val"),
            ("cry/b.wav", "cry", "test"),
            ("other/c.wav", "other", "val"),
        ],
        rng,
    )
    _dataset(extra, [("music/m.wav", "music", "val"), ("music/t.wav", "music", "test")], rng)

    rows = load_script("telephone_view").build(view, extra, out)

    assert sorted(r["path"] for r in rows) == [
        "cry/a.wav",
        "other/music__8k-origin__m.wav",
        "other/music__full-band__m.wav",
    ]
    assert {r["split"] for r in rows} == {"val"}
    full, _ = sf.read(out / "other/music__full-band__m.wav")
    narrow, _ = sf.read(out / "other/music__8k-origin__m.wav")
    assert full.shape == narrow.shape
    assert _share_above(full, 4100) > 0.4  # white noise: half its power is above 4 kHz
    assert _share_above(narrow, 4100) < 1e-3
