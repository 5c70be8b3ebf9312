"""scripts/extra_negatives.py: excerpts of a track never repeat audio, and no package feeds both
folders, so no recording is taught twice."""

from __future__ import annotations

import numpy as np

from tests.scripts import load_script


def test_excerpts_of_a_track_never_overlap_and_skip_silence() -> None:
    extra = load_script("extra_negatives")
    rate = extra.TARGET_SAMPLE_RATE
    rng = np.random.default_rng(0)
    track = (0.1 * rng.standard_normal(12 * rate)).astype(np.float32)  # 12 s: room for two
    pieces = extra.excerpts(track, extra.DEEP_MUSIC_EXCERPTS)
    starts = [start for start, _ in pieces]
    assert len(pieces) == 2
    assert all(len(p) == extra.EXCERPT_S * rate for _, p in pieces)
    assert starts[1] - starts[0] >= extra.EXCERPT_S

    track[: 6 * rate] = 0.0  # the first excerpt is silence now
    assert [start for start, _ in extra.excerpts(track, 2)] == starts[1:]


def test_no_package_feeds_both_folders() -> None:
    extra = load_script("extra_negatives")
    sounds, music = ({s.package for s in sels} for sels in extra.FOLDERS.values())
    assert len(music) == 15 and not sounds & music
