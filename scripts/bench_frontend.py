"""Benchmark: per-window cost of our front end vs the pipeline typical of existing projects.

Baseline (what most cry/sound detectors on GitHub do per window): `librosa.load` of the window's
file (resampling to librosa's default 22.05 kHz), `librosa.feature.melspectrogram(n_fft=2048)`
and `librosa.feature.mfcc(n_mfcc=40)`. Ours: `models.audio.load_mono` + `LogMel.window`, the
same file; and the edge's real hot path, `StreamingLogMel` fed one 0.25 s hop.

Both run in the same process, pinned to one core, with BLAS/OpenMP limited to one thread, over
1 s windows cut from a real recording; warm-up calls (librosa's numba JIT) are not timed.

    python scripts/bench_frontend.py [--audio FILE] [--repeats N] [--out results.json]

Needs the dev or train extra (librosa).
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy loads its BLAS: hence the imports below this line.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from models.audio import load_mono
from models.frontend import FrontendConfig, LogMel, StreamingLogMel

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AUDIO = REPO / "tests" / "fixtures" / "audio" / "cry" / "donateacry_ios_045c5483.wav"
DEFAULT_OUT = REPO / "scripts" / "results" / "frontend.json"
HOP = 4000


def _time_per_call(fn: Callable[[int], object], items: int, repeats: int) -> list[float]:
    """Seconds per call of fn(i) for i in range(items), over `repeats` passes."""
    for i in range(items):  # warm-up: caches, JIT
        fn(i)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(items):
            fn(i)
        samples.append((time.perf_counter() - start) / items)
    return samples


def run(audio: Path, repeats: int) -> dict[str, object]:
    import librosa

    config = FrontendConfig()
    signal = load_mono(audio)
    window_count = (len(signal) - config.window_samples) // HOP + 1
    logmel = LogMel(config)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(window_count):
            path = Path(tmp) / f"window_{i:03d}.wav"
            sf.write(path, signal[i * HOP : i * HOP + config.window_samples], 16000, "PCM_16")
            files.append(path)

        def baseline(i: int) -> object:
            y, sr = librosa.load(files[i])
            mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2048)
            mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=40)
            return mel, mfcc

        def ours_from_file(i: int) -> object:
            return logmel.window(load_mono(files[i]))

        windows = [signal[i * HOP : i * HOP + config.window_samples] for i in range(window_count)]

        def ours_in_memory(i: int) -> object:
            return logmel.window(windows[i])

        stream = StreamingLogMel(config)
        stream.push(signal[: config.window_samples])
        hops = [signal[config.window_samples :][j : j + HOP] for j in range(0, HOP * 8, HOP)]
        hops = [h for h in hops if len(h) == HOP]

        def ours_streaming_hop(i: int) -> object:
            stream.push(hops[i % len(hops)])
            return stream.window()

        timings = {
            "baseline_librosa_load_mel2048_mfcc40": _time_per_call(baseline, window_count, repeats),
            "ours_load_and_window": _time_per_call(ours_from_file, window_count, repeats),
            "ours_window_in_memory": _time_per_call(ours_in_memory, window_count, repeats),
            "ours_streaming_hop_update": _time_per_call(ours_streaming_hop, window_count, repeats),
        }
    per_window_ms = {k: statistics.median(v) * 1e3 for k, v in timings.items()}
    base = per_window_ms["baseline_librosa_load_mel2048_mfcc40"]
    return {
        "audio": str(audio.relative_to(REPO) if audio.is_relative_to(REPO) else audio),
        "windows": window_count,
        "repeats": repeats,
        "frontend": config.model_dump(),
        "median_ms_per_window": {k: round(v, 4) for k, v in per_window_ms.items()},
        "speedup_vs_baseline": {
            k: round(base / v, 1) for k, v in per_window_ms.items() if k.startswith("ours")
        },
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_model(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "librosa": librosa.__version__,
            "pinned_cpu": sorted(os.sched_getaffinity(0)),
        },
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--audio", type=Path, default=DEFAULT_AUDIO)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    result = run(args.audio.resolve(), args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    speedups = result["speedup_vs_baseline"]
    assert isinstance(speedups, dict)
    medians = result["median_ms_per_window"]
    assert isinstance(medians, dict)
    print(f"{result['windows']} windows x {result['repeats']} repeats, one core")
    print(f"{'pipeline':<40} {'ms/window':>10} {'speedup':>8}")
    for name, ms in medians.items():
        speed = f"{speedups[name]:.1f}x" if name in speedups else "1.0x"
        print(f"{name:<40} {ms:>10.3f} {speed:>8}")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
