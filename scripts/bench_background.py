"""False alarms over hours of held-out background, which the dev test split cannot measure.

    python scripts/bench_background.py --data ../shared/datasets [--sources second]
        [--bundle B] [--trusted KEYS] [--cache DIR] [--out JSON]

The dev test split holds 6 minutes of negative audio: no false alarm there still allows 30.6
per hour, against a target of 0.5. This plays hours of free recordings that no bundle or
candidate has trained or been selected on through the edge's windowing (1 s windows, 0.25 s
hop) and episode logic (`models.detection`), one continuous stream per source:

- `speech 8k`: Asterisk's voice prompts in Canadian French, Italian (two speakers) and Russian,
  8 kHz telephone recordings of four professional speakers (the English prompts are in the dev
  sets, and the Spanish ones are read by the same speaker, so both are left out; the `silence`
  folders too);
- `music`: the Battle for Wesnoth and Warzone 2100 soundtracks, full band;
- `music 8k`: the same tracks through an 8 kHz channel (`models.audio.low_pass` at 4 kHz), what
  hold music is: the dev test split's one false alarm of every rejected candidate was hold music.

That `first` set was read for 1.1.0 and a candidate on 2026-11-21/22 and has since informed a
choice, so it is validation now. `--sources second` plays recordings no model was scored on
before the 1.2.0 ship rule was written (models/pretrained/README-cry-detector.md), the same
three kinds of stream: Spanish (Colombian) and French 8 kHz prompts by two more speakers, and
the SuperTux, Hedgewars, FreedroidRPG, Starfighter, X-Moto and Extreme Tux Racer soundtracks,
as they are and through the 8 kHz channel. It was read for 1.1.0 and one candidate.
`--sources third` (written 2026-11-22 before any model was scored on it) plays the Flare,
Warmux and Battle Tanks soundtracks, as they are and through the 8 kHz channel, and `hold
music`: the Asterisk hold-music track missing from the dev sets, from the GSM package, so as a
phone call plays it (73 s: a check on the kind of recording that failed candidates, not a rate).

The packages are fetched with `apt-get download` into --cache and unpacked, never installed or
committed; none is used by the dev sets (their manifests' `source_file`) or by
`scripts/extra_negatives.py` (checked before anything is scored).

Baseline, in the same run: bench_models.py's log-mel statistics with gradient boosting, as a
window detector (trained on the train split's 1 s windows, silence inside cries left out), its
threshold set to catch the same share of validation cry windows as the network does at its
shipped threshold, so both are compared at the same cry-detection rate.

Per source: hours, false alarms, the rate and the rate a count still allows (one-sided 95%),
and every false alarm (file, second, peak score). Then the network's operating points: what a
stricter start rule (k of n windows) or threshold, both edge settings, buys against the
held-out background and costs in validation cries caught and seconds to the event. Results go to
scripts/results/background.json, a table and a bar chart scripts/results/background.png.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy loads its BLAS: hence the imports below this line.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_models import _clips
from extra_negatives import FOLDERS

from models import metrics
from models.audio import TARGET_SAMPLE_RATE, low_pass, resample, to_mono
from models.bundle import load_bundle
from models.dataset import read_dataset
from models.detection import EpisodeTracker
from models.evaluate import EDGE_HOP_S, sounding_windows, window_scores
from models.frontend import FrontendConfig, LogMel
from models.inference import BundleModel
from models.signing import TrustedKeys

TELEPHONE_CUTOFF_HZ = 4000.0
DEV_TEST_STREAM = "dev test negatives"
BASELINE_TRAIN_HOP_S = 0.5
RULES = ((2, 3), (4, 6), (6, 8), (8, 12))  # k of n windows start an episode; (2, 3) is the default
STRICTER_THRESHOLDS = (0.998, 0.999)
SPEECH = ("**/*.wav",)
MUSIC = ("**/*.ogg", "**/*.opus")
GSM_SPEECH = ("**/*.gsm",)
# Only the music folders: these games' other sounds include screams and voices.
SOUNDTRACKS = ("**/music/**/*.ogg", "**/Music/*.ogg", "**/Musics/*.ogg")
# The one Asterisk hold-music track the dev sets lack (they hold the other four, from the wav
# package), as Asterisk plays it to a GSM call: the only real hold music not yet heard.
UNHEARD_HOLD_MUSIC = ("**/manolo_camp-morning_coffee.gsm",)


@dataclass(frozen=True)
class Source:
    """One continuous stream: every audio file of `packages` matching `patterns`."""

    name: str
    packages: tuple[str, ...]
    patterns: tuple[str, ...]
    licence: str  # from the packages' debian/copyright
    # the stream of the same recordings sent through an 8 kHz channel (decoded once for both)
    telephone_copy: str | None = None
    skip_folders: tuple[str, ...] = ()


SPEECH_PACKAGES = (
    "asterisk-core-sounds-fr-wav",
    "asterisk-core-sounds-it-wav",
    "asterisk-core-sounds-ru-wav",
    "asterisk-prompt-it-menardi-wav",
)
MUSIC_PACKAGES = ("wesnoth-1.16-music", "warzone2100-music")
SOURCE_SETS = {
    "first": (
        Source("speech 8k", SPEECH_PACKAGES, SPEECH, "CC-BY-SA-3.0", skip_folders=("silence",)),
        Source("music", MUSIC_PACKAGES, MUSIC, "GPL-2+ / CC0-1.0", telephone_copy="music 8k"),
    ),
    "second": (
        Source(
            "speech 8k",
            ("asterisk-prompt-es-co", "asterisk-prompt-fr-armelle"),
            GSM_SPEECH,
            "GPL-2 / BSD-style (Michel Gutierrez)",
        ),
        Source(
            "music",
            (
                "supertux-data",
                "hedgewars-data",
                "freedroidrpg-data",
                "starfighter-data",
                "xmoto-data",
                "extremetuxracer-data",
            ),
            SOUNDTRACKS,
            "GPL-2 / GPL-2+ / GPL-3+",
            telephone_copy="music 8k",
        ),
    ),
    "third": (
        Source(
            "music",
            ("flare-game", "warmux-data", "btanks-data"),
            (*SOUNDTRACKS, "**/tunes/*.ogg"),
            "CC-BY-SA-3.0 / GPL-2+ / LGPL-2.1+",
            telephone_copy="music 8k",
        ),
        Source("hold music", ("asterisk-moh-opsound-gsm",), UNHEARD_HOLD_MUSIC, "CC-BY-SA-3.0"),
    ),
}


def stream_names(sources: Iterable[Source]) -> tuple[str, ...]:
    """The streams a source set plays, each source's 8 kHz copy after it."""
    return tuple(
        name
        for source in sources
        for name in (source.name, source.telephone_copy)
        if name is not None
    )


def packages_of(sources: Iterable[Source]) -> set[str]:
    """Every Debian package a source set takes recordings from."""
    return {p for source in sources for p in source.packages}


def packages_in_use(data: Path) -> set[str]:
    """Debian packages the dev sets (`debian:<package>:...` in a manifest's `source_file`)
    and `scripts/extra_negatives.py` take audio from."""
    used = {s.package for selections in FOLDERS.values() for s in selections}
    for manifest in data.glob("*/manifest.csv"):
        for clip in read_dataset(manifest.parent).clips:
            origin = clip.extra.get("source_file", "")
            if origin.startswith("debian:"):
                used.add(origin.split(":")[1])
    return used


def recording_id(package: str, file: str) -> str:
    """A recording's name across the formats Debian ships it in: Asterisk's sounds come as
    `-wav`, `-gsm` and `-g722` packages of the same recordings, under the same file names."""
    return f"{re.sub(r'-(wav|gsm|g722)$', '', package)}:{Path(file).stem}"


def recordings_in_use(data: Path) -> set[str]:
    """`recording_id` of every Debian file the dev sets cut clips from."""
    return {
        recording_id(*clip.extra["source_file"].split(":")[1:3])
        for manifest in data.glob("*/manifest.csv")
        for clip in read_dataset(manifest.parent).clips
        if clip.extra.get("source_file", "").startswith("debian:")
    }


def fetch(packages: Iterable[str], cache: Path) -> dict[str, Path]:
    """Each package downloaded (once) and unpacked under `cache`: {package: root}."""
    cache.mkdir(parents=True, exist_ok=True)
    wanted = sorted(set(packages))
    missing = [p for p in wanted if not (cache / p).is_dir()]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=cache, check=True)
        for package in missing:
            (deb,) = cache.glob(f"{package}_*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / package)], check=True)
            deb.unlink()
    return {p: cache / p for p in wanted}


def source_files(source: Source, roots: dict[str, Path]) -> list[tuple[str, Path]]:
    """(package, file) of every recording of a source, in a fixed order."""
    out = []
    for package in source.packages:
        root = roots[package]
        for pattern in source.patterns:
            for file in sorted(root.glob(f"usr/share/{pattern}")):
                if not set(file.relative_to(root).parts) & set(source.skip_folders):
                    out.append((package, file))
    return out


def decode(file: Path) -> np.ndarray:
    # Not load_mono: its check that every declared frame decodes refuses some packaged oggs
    # over frames that do not matter here (as in extra_negatives.py).
    samples, rate = sf.read(file, dtype="float32", always_2d=True)
    return resample(to_mono(samples), rate, TARGET_SAMPLE_RATE)


def window_statistics(logmel: LogMel, samples: np.ndarray, hop: int) -> np.ndarray:
    """The baseline's features (per-band mean and standard deviation of the log-mel frames,
    as bench_models.py computes them on a clip) for every 1 s window `hop` samples apart."""
    cfg = logmel.config
    padded = np.pad(samples, (0, max(0, cfg.window_samples - len(samples))))
    frames = logmel.frames(padded).astype(np.float64)
    starts = np.arange(0, frames.shape[0] - cfg.n_frames + 1, hop // cfg.hop_length)
    sums = np.vstack([np.zeros(frames.shape[1]), np.cumsum(frames, axis=0)])
    squares = np.vstack([np.zeros(frames.shape[1]), np.cumsum(frames**2, axis=0)])
    mean = (sums[starts + cfg.n_frames] - sums[starts]) / cfg.n_frames
    variance = (squares[starts + cfg.n_frames] - squares[starts]) / cfg.n_frames - mean**2
    return np.hstack([mean, np.sqrt(np.maximum(variance, 0.0))])


@dataclass
class Stream:
    """Scores of consecutive recordings played as one stream, and where each window came from."""

    scores: list[float]
    origins: list[tuple[str, float]]  # (recording, second in it) per window
    seconds: float = 0.0

    def add(self, recording: str, scores: np.ndarray, seconds: float) -> None:
        self.scores += scores.tolist()
        self.origins += [(recording, i * EDGE_HOP_S) for i in range(len(scores))]
        self.seconds += seconds


def episodes(scores: list[float], threshold: float, k: int = 2, n: int = 3) -> list[range]:
    """The windows of each episode the edge's logic (start: k of the last n windows at the
    threshold) raises on a stream of scores."""
    tracker = EpisodeTracker(threshold, k=k, n=n)
    out: list[range] = []
    start = 0
    for i, score in enumerate(scores):
        change = tracker.update(score)
        if change == "start":
            start = i
        elif change == "end":
            out.append(range(start, i + 1))
    if tracker.active:
        out.append(range(start, len(scores)))
    return out


def false_alarms(stream: Stream, threshold: float) -> dict[str, Any]:
    """Episodes the edge would raise on a stream of negatives (its default rule), each with
    its origin and its highest score."""
    found = []
    for episode in episodes(stream.scores, threshold):
        recording, second = stream.origins[episode.start]
        peak = max(stream.scores[episode.start : episode.stop])
        found.append({"recording": recording, "second": second, "peak": round(peak, 4)})
    hours = stream.seconds / 3600
    return {
        "hours": round(hours, 3),
        "false_alarms": len(found),
        "per_hour": round(len(found) / hours, 3) if hours else None,
        "per_hour_upper_95": round(metrics.poisson_rate_upper(len(found), hours), 3)
        if hours
        else None,
        "episodes": found,
    }


def held_out_total(results: dict[str, Any], system: str) -> dict[str, Any]:
    """False alarms and hours summed over the held-out streams (not the dev test split)."""
    rows = [r[system] for name, r in results["sources"].items() if name != DEV_TEST_STREAM]
    count, hours = sum(r["false_alarms"] for r in rows), sum(r["hours"] for r in rows)
    return {
        "hours": round(hours, 3),
        "false_alarms": count,
        "per_hour": round(count / hours, 3),
        "per_hour_upper_95": round(metrics.poisson_rate_upper(count, hours), 3),
    }


Scorer = Callable[[np.ndarray], np.ndarray]


def baseline_detector(
    data: Path, val_cries: list[dict[str, Any]], cnn_val: list[np.ndarray], threshold: float
) -> tuple[Scorer, float, float]:
    """The log-mel statistics baseline as a window scorer, with the threshold at which it
    catches the share of validation cry windows (`cnn_val`: the network's scores of
    `val_cries`) the network catches at `threshold`: (scorer, its threshold, that share)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    logmel = LogMel(FrontendConfig())
    window = logmel.config.window_samples
    features, truth = [], []
    train_hop = int(BASELINE_TRAIN_HOP_S * TARGET_SAMPLE_RATE)
    for clip in tqdm(_clips(data, "train"), desc="baseline train windows", unit="clip"):
        x = window_statistics(logmel, clip["samples"], train_hop)
        if clip["positive"]:
            x = x[sounding_windows(clip["samples"], len(x), window, train_hop)]
        features.append(x)
        truth.append(np.full(len(x), clip["positive"]))
    model = HistGradientBoostingClassifier(random_state=0).fit(
        np.vstack(features), np.concatenate(truth)
    )
    hop = int(EDGE_HOP_S * TARGET_SAMPLE_RATE)

    def score(samples: np.ndarray) -> np.ndarray:
        probabilities: np.ndarray = model.predict_proba(window_statistics(logmel, samples, hop))
        return probabilities[:, 1]

    cnn_kept, baseline_kept = [], []
    for clip, cnn_scores in zip(val_cries, cnn_val, strict=True):
        keep = sounding_windows(clip["samples"], len(cnn_scores), window, hop)
        cnn_kept.append(cnn_scores[keep])
        baseline_kept.append(score(clip["samples"])[keep])
    caught = float(np.mean(np.concatenate(cnn_kept) >= threshold))
    baseline_threshold = float(np.quantile(np.concatenate(baseline_kept), 1 - caught))
    return score, baseline_threshold, caught


def operating_points(
    streams: dict[str, Stream], cnn_val: list[np.ndarray], thresholds: list[float]
) -> list[dict[str, Any]]:
    """What a stricter start rule or threshold (edge `detection.k`, `n`, `thresholds`) buys
    against music and what it costs in cries: per rule, held-out false alarms per hour, the
    share of validation cry clips (mostly 7 s) that raise an event, and the median seconds of
    audio until it does. A description of the trade-off for the user who sets them; nothing
    here chooses the shipped rule."""
    out = []
    for threshold in thresholds:
        for k, n in RULES:
            delays = [
                raised[0].start * EDGE_HOP_S + 1.0
                for scores in cnn_val
                if (raised := episodes(scores.tolist(), threshold, k, n))
            ]
            per_source = {
                name: len(episodes(stream.scores, threshold, k, n))
                for name, stream in streams.items()
            }
            count = sum(per_source.values())
            hours = sum(stream.seconds for stream in streams.values()) / 3600
            out.append(
                {
                    "threshold": round(threshold, 6),
                    "k": k,
                    "n": n,
                    "val_cry_clips_with_event": round(len(delays) / len(cnn_val), 3),
                    "median_seconds_to_event": float(np.median(delays)) if delays else None,
                    "held_out_per_hour": round(count / hours, 2),
                    "held_out_per_hour_upper_95": round(
                        metrics.poisson_rate_upper(count, hours), 2
                    ),
                    "per_source_per_hour": {
                        name: round(per_source[name] / (stream.seconds / 3600), 2)
                        for name, stream in streams.items()
                    },
                }
            )
    return out


def dev_test_stream(data: Path, scorer: Scorer) -> Stream:
    """The dev test split's negatives, the stream `evaluate` counts false alarms on."""
    stream = Stream([], [])
    for clip in _clips(data, "test"):
        if not clip["positive"]:
            seconds = len(clip["samples"]) / TARGET_SAMPLE_RATE
            stream.add(clip["group"], scorer(clip["samples"]), seconds)
    return stream


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["sources"])
    systems = ("cnn_int8", "baseline")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for k, system in enumerate(systems):
        rows = [results["sources"][n][system] for n in names]
        rates = np.array([r["per_hour"] for r in rows])
        upper = np.array([r["per_hour_upper_95"] for r in rows]) - rates
        x = np.arange(len(names)) + (k - 0.5) * width
        ax.bar(x, rates, width, yerr=[np.zeros_like(upper), upper], capsize=4, label=system)
    ax.axhline(0.5, color="k", linestyle="--", linewidth=1, label="target 0.5 / h")
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(
        [f"{n}\n{results['sources'][n]['cnn_int8']['hours']:.2f} h" for n in names], fontsize=8
    )
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylabel("false alarms per hour")
    ax.set_title(
        f"{results['bundle']}, {results['source_set']} held-out set: false alarms "
        "(whisker: one-sided 95% bound)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the dev datasets")
    parser.add_argument("--bundle", type=Path, default=REPO / "models/pretrained/cry-detector")
    parser.add_argument("--trusted", type=Path, default=REPO / "models/pretrained/keys")
    parser.add_argument("--sources", choices=sorted(SOURCE_SETS), default="first")
    parser.add_argument("--cache", type=Path, default=REPO / "out/background-hours")
    parser.add_argument(
        "--out", type=Path, help="default scripts/results/background[-SOURCES].json"
    )
    args = parser.parse_args()
    sources = SOURCE_SETS[args.sources]
    suffix = "" if args.sources == "first" else f"-{args.sources}"
    out: Path = args.out or REPO / f"scripts/results/background{suffix}.json"
    held_out_streams = stream_names(sources)

    packages = packages_of(sources)
    overlap = packages & packages_in_use(args.data)
    if overlap:
        sys.exit(f"not held out: the dev sets or extra_negatives.py use {sorted(overlap)}")
    roots = fetch(packages, args.cache)
    heard = recordings_in_use(args.data)
    replayed = {recording_id(p, f.name) for s in sources for p, f in source_files(s, roots)} & heard
    if replayed:
        sys.exit(f"not held out: the dev sets hold {sorted(replayed)}")

    bundle = load_bundle(args.bundle, TrustedKeys.from_paths([args.trusted]))
    label = next(iter(bundle.manifest.thresholds))
    threshold = bundle.manifest.thresholds[label]
    model = BundleModel(bundle, runtime="onnx", precision="int8")

    def cnn(samples: np.ndarray) -> np.ndarray:
        return window_scores(model, samples, label)

    val_cries = [c for c in _clips(args.data, "val") if c["positive"]]
    cnn_val = [cnn(c["samples"]) for c in tqdm(val_cries, desc="val cries", unit="clip")]
    baseline, baseline_threshold, caught = baseline_detector(
        args.data, val_cries, cnn_val, threshold
    )
    systems = {"cnn_int8": (cnn, threshold), "baseline": (baseline, baseline_threshold)}
    results: dict[str, Any] = {
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
        "source_set": args.sources,
        "val_cry_windows_caught": round(caught, 4),
        "thresholds": {name: t for name, (_, t) in systems.items()},
        "sources": {},
    }
    streams = {DEV_TEST_STREAM: {n: dev_test_stream(args.data, s) for n, (s, _) in systems.items()}}
    streams |= {stream: {name: Stream([], []) for name in systems} for stream in held_out_streams}
    for source in sources:
        for package, file in tqdm(source_files(source, roots), desc=source.name, unit="file"):
            mono = decode(file)
            versions = {source.name: mono}
            if source.telephone_copy:
                versions[source.telephone_copy] = low_pass(
                    mono, TARGET_SAMPLE_RATE, TELEPHONE_CUTOFF_HZ
                )
            recording = f"{package}:/{file.relative_to(roots[package])}"
            seconds = len(mono) / TARGET_SAMPLE_RATE
            for stream, samples in versions.items():
                for name, (scorer, _) in systems.items():
                    streams[stream][name].add(recording, scorer(samples), seconds)
    for source_name, per_system in streams.items():
        results["sources"][source_name] = {
            name: false_alarms(per_system[name], t) for name, (_, t) in systems.items()
        }
    results["held_out_total"] = {name: held_out_total(results, name) for name in systems}
    results["cnn_operating_points"] = operating_points(
        {stream: streams[stream]["cnn_int8"] for stream in held_out_streams},
        cnn_val,
        [threshold, *(t for t in STRICTER_THRESHOLDS if t > threshold)],
    )
    results["packages"] = {
        stream: {"packages": list(s.packages), "licence": s.licence}
        for s in sources
        for stream in stream_names([s])
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))

    print(
        f"\n{results['bundle']}: false alarms per hour, edge episode logic; both systems catch "
        f"{caught:.1%} of validation cry windows"
    )
    print(f"{'source':<20}{'hours':>7}" + "".join(f"{s:>28}" for s in systems))
    rows = [*results["sources"].items(), ("held-out total", results["held_out_total"])]
    for source_name, row in rows:
        cells = "".join(
            f"{r['false_alarms']} = {r['per_hour']:.2f}/h".rjust(16)
            + f" (<= {r['per_hour_upper_95']:.2f})".rjust(12)
            for r in row.values()
        )
        print(f"{source_name:<20}{row['cnn_int8']['hours']:>7.2f}{cells}")
    print("\noperating points of the network (edge detection.k / n / thresholds)")
    print(
        f"{'threshold':>10}{'k of n':>8}{'val cry clips':>15}{'s to event':>12}{'held-out /h':>18}"
    )
    for point in results["cnn_operating_points"]:
        print(
            f"{point['threshold']:>10}{point['k']:>4} of {point['n']:<2}"
            f"{point['val_cry_clips_with_event']:>14.1%}{point['median_seconds_to_event']:>12}"
            f"{point['held_out_per_hour']:>8} (<= {point['held_out_per_hour_upper_95']})"
        )
    print(f"\nsaved {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
