"""Stress test of the machine-anomaly bundle with synthetic faults (documented, not a claim).

    python scripts/bench_anomaly.py --data ../shared/datasets [--bundle BUNDLE]

Only one real abnormal clip exists in the development data, so detection is probed by adding
faults to the `test` normals (fixed seed), each at a level relative to the clip's RMS:
- impulses: a click train (8 per second, decaying 2 ms bursts), as from a loose part;
- tonal: a 1.5 kHz sine, as from a whining bearing or a resonance;
- bearing: 3-5 kHz noise amplitude-modulated at 30 Hz, the classic outer-race signature.
Reports clip-level ROC-AUC (highest window score) of faulty vs clean normals per fault and level,
the share of normal test windows over the shipped threshold, and the real abnormal clip's score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from models import metrics
from models.audio import level_dbfs, load_mono, low_pass
from models.bundle import load_bundle
from models.dataset import read_dataset
from models.evaluate import window_scores
from models.inference import BundleModel
from models.signing import TrustedKeys

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
LEVELS_DB = (-10.0, -20.0)
SEED = 7


def _scaled(x: np.ndarray, fault: np.ndarray, level_db: float) -> np.ndarray:
    gain = 10 ** ((level_dbfs(x) + level_db - level_dbfs(fault)) / 20)
    return np.clip(x + fault * np.float32(gain), -1, 1).astype(np.float32)


def impulses(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    fault = np.zeros_like(x)
    burst = rng.standard_normal(int(0.002 * RATE)) * np.exp(-np.linspace(0, 5, int(0.002 * RATE)))
    for start in range(int(rng.integers(0, RATE // 8)), len(x) - len(burst), RATE // 8):
        fault[start : start + len(burst)] += burst
    return fault


def tonal(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(len(x)) / RATE
    return np.sin(2 * np.pi * 1500 * t + rng.uniform(0, 2 * np.pi)).astype(np.float32)


def bearing(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(len(x)).astype(np.float32)
    band = noise - low_pass(noise, RATE, 3000)  # > 3 kHz
    band = low_pass(band, RATE, 5000)  # < 5 kHz
    t = np.arange(len(x)) / RATE
    return (band * (0.5 + 0.5 * np.sin(2 * np.pi * 30 * t))).astype(np.float32)


FAULTS = {"impulses": impulses, "tonal": tonal, "bearing": bearing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=REPO / "models/pretrained/machine-anomaly")
    parser.add_argument("--trusted", type=Path, default=REPO / "models/pretrained/keys")
    parser.add_argument("--out", type=Path, default=REPO / "scripts/results/anomaly.json")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, TrustedKeys.from_paths([args.trusted]))
    model = BundleModel(bundle)
    label = next(iter(bundle.manifest.thresholds))
    threshold = bundle.manifest.thresholds[label]
    machine = read_dataset(args.data / "machine")
    normals = [load_mono(c.path) for c in machine.split("test") if c.label == "normal"]
    abnormal = [load_mono(c.path) for c in machine.clips if c.label == "abnormal"]
    rng = np.random.default_rng(SEED)

    def clip_score(x: np.ndarray) -> float:
        return float(window_scores(model, x, label).max())

    normal_windows = np.concatenate([window_scores(model, x, label) for x in normals])
    clean = np.array([clip_score(x) for x in normals])
    result: dict[str, Any] = {
        "threshold": threshold,
        "normal_test_clips": len(normals),
        "normal_windows_over_threshold": float((normal_windows >= threshold).mean()),
        "normal_clip_scores": clean.round(4).tolist(),
        "abnormal_clip_scores": [round(clip_score(x), 4) for x in abnormal],
        "synthetic_faults": {},
    }
    for name, make in FAULTS.items():
        for level in LEVELS_DB:
            faulty = np.array([clip_score(_scaled(x, make(x, rng), level)) for x in normals])
            truth = np.r_[np.zeros(len(clean), bool), np.ones(len(faulty), bool)]
            result["synthetic_faults"][f"{name}_{level:g}dB"] = {
                "roc_auc": metrics.roc_auc(truth, np.r_[clean, faulty]),
                "detected_at_threshold": float((faulty >= threshold).mean()),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"threshold {threshold:.4f}; normal test windows over it: "
        f"{result['normal_windows_over_threshold']:.1%}; real abnormal clip score(s): "
        f"{result['abnormal_clip_scores']}"
    )
    print(f"{'fault':<18} {'ROC-AUC':>8} {'detected':>9}")
    for name, r in result["synthetic_faults"].items():
        print(f"{name:<18} {r['roc_auc']:>8.3f} {r['detected_at_threshold']:>9.0%}")
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
