"""scripts/bench_background.py: the baseline sees each window as bench_models sees a clip,
every false alarm is traced to its recording, and only held-out packages are played."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models.frontend import FrontendConfig, LogMel
from tests.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def test_window_statistics_are_the_clip_statistics_of_each_window() -> None:
    bench = load_script("bench_background")
    logmel = LogMel(FrontendConfig())
    samples = (0.1 * np.random.default_rng(0).standard_normal(23_950)).astype(np.float32)
    stats = bench.window_statistics(logmel, samples, 4000)
    assert len(stats) == len(logmel.windows(samples, 4000))  # the windows the network scores
    for i, row in enumerate(stats):
        frames = logmel.frames(samples[i * 4000 : i * 4000 + 16000])
        expected = np.concatenate([frames.mean(axis=0), frames.std(axis=0)])
        np.testing.assert_allclose(row, expected, atol=1e-4)


def test_each_false_alarm_names_its_recording_second_and_peak() -> None:
    bench = load_script("bench_background")
    stream = bench.Stream([], [])
    stream.add("quiet.ogg", np.full(40, 0.1), 10.0)
    # two windows above threshold start an episode at the second one (2 of 3)
    stream.add("loud.ogg", np.array([0.1, 0.95, 0.99, 0.97, 0.1, 0.1, 0.1, 0.1, 0.1]), 3.0)
    result = bench.false_alarms(stream, threshold=0.9)
    assert result["false_alarms"] == 1
    assert result["episodes"] == [{"recording": "loud.ogg", "second": 0.5, "peak": 0.99}]
    assert result["hours"] == round(13 / 3600, 3)
    assert result["per_hour_upper_95"] > result["per_hour"]


def test_a_stricter_start_rule_raises_no_event_on_a_short_burst() -> None:
    bench = load_script("bench_background")
    burst = [0.1] * 4 + [0.99] * 3 + [0.1] * 8  # 0.75 s above the threshold
    sustained = [0.1] * 4 + [0.99] * 12 + [0.1] * 8  # 3 s
    assert [e.start for e in bench.episodes(burst, 0.9)] == [5]  # the default: 2 of 3
    assert bench.episodes(burst, 0.9, k=6, n=8) == []
    assert [e.start for e in bench.episodes(sustained, 0.9, k=6, n=8)] == [9]


def test_a_package_the_dev_sets_use_is_not_held_out(tmp_path: Path) -> None:
    bench = load_script("bench_background")
    speech = tmp_path / "background"
    speech.mkdir()
    with (speech / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "group", "source_file"])
        writer.writerow(
            ["speech/a.wav", "speech", "train", "g", "debian:asterisk-core-sounds-it-wav:/x.wav"]
        )
    (speech / "speech").mkdir()
    import soundfile as sf

    sf.write(speech / "speech" / "a.wav", np.zeros(1600, dtype=np.float32), 16000)
    used = bench.packages_in_use(tmp_path)
    assert "asterisk-core-sounds-it-wav" in used  # from the manifest
    assert "tuxpaint-stamps-default" in used  # from extra_negatives.py
    held_out = bench.packages_of(bench.SOURCE_SETS["first"])
    assert held_out & used == {"asterisk-core-sounds-it-wav"}


def test_no_two_held_out_sets_share_a_package() -> None:
    bench = load_script("bench_background")
    sets = {name: bench.packages_of(sources) for name, sources in bench.SOURCE_SETS.items()}
    assert sorted(sets) == ["first", "second", "third"]
    for name, packages in sets.items():
        others = set().union(*(p for n, p in sets.items() if n != name))
        assert packages and not packages & others, name
    assert bench.stream_names(bench.SOURCE_SETS["second"]) == ("speech 8k", "music", "music 8k")
    assert bench.stream_names(bench.SOURCE_SETS["third"]) == ("music", "music 8k", "hold music")


def test_training_music_is_not_held_out() -> None:
    bench = load_script("bench_background")
    used = {s.package for s in load_script("extra_negatives").MUSIC_SELECTIONS}
    assert "openclonk-data" in used
    held_out = set().union(*map(bench.packages_of, bench.SOURCE_SETS.values()))
    assert not used & held_out


@pytest.mark.skipif(
    not (REPO.parent / "shared/datasets").is_dir(), reason="dev datasets not beside the checkout"
)
def test_no_held_out_package_is_in_the_dev_sets() -> None:
    bench = load_script("bench_background")
    held_out = set().union(*map(bench.packages_of, bench.SOURCE_SETS.values()))
    assert not held_out & bench.packages_in_use(REPO.parent / "shared/datasets")


@pytest.mark.skipif(
    not (REPO.parent / "shared/datasets").is_dir(), reason="dev datasets not beside the checkout"
)
def test_the_unheard_hold_music_is_the_one_track_the_dev_sets_lack() -> None:
    bench = load_script("bench_background")
    heard = bench.recordings_in_use(REPO.parent / "shared/datasets")
    tracks = ("macroform-cold_day", "macroform-robot_dity", "reno_project-system")
    for track in tracks:  # the wav package's tracks are in the dev sets, and so their gsm copies
        assert bench.recording_id("asterisk-moh-opsound-gsm", f"{track}.gsm") in heard
    unheard = bench.recording_id("asterisk-moh-opsound-gsm", "manolo_camp-morning_coffee.gsm")
    assert unheard not in heard
    assert bench.UNHEARD_HOLD_MUSIC == ("**/manolo_camp-morning_coffee.gsm",)
    # the other languages' prompts share the English ones' file names, not their recordings
    assert bench.recording_id("asterisk-core-sounds-fr-wav", "conf-full.wav") not in heard
