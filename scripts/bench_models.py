"""Benchmark the cry detector against the trivial baseline, clean and under stress.

    python scripts/bench_models.py --data ../shared/datasets [--bundle BUNDLE]

Variants of the dev `test` split, built with a fixed seed:
- clean;
- every test cry mixed into a random test negative (speech, music, noise, glass, machine) at
  10 dB and at 0 dB SNR (cry RMS over the negative's RMS), negatives left clean;
- every clip low-passed at 3.8 kHz (what an 8 kHz phone recording keeps).
Clip score = highest window score (the edge's 1 s windows at a 0.25 s hop). Also per
bandwidth subgroup (8 kHz-origin vs full-band positives, against all negatives). Every ROC-AUC
has a 95% interval from redrawing whole recording groups, and the network's lead over the
baseline a paired one (the same redraw for both), so "beats the baseline" means more than the
luck of which recorders are in `test`.

Baseline: clip-level log-mel statistics (per-band mean and standard deviation of the same front
end) with scikit-learn's HistGradientBoostingClassifier, trained on the clean train split.

Latency: one window, one thread, median of 300 runs, per runtime file in the bundle.
Results go to scripts/results/models.json and a table.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy loads its BLAS: hence the imports below this line.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from binary_view import NEGATIVE, POSITIVE

from models import metrics
from models.audio import level_dbfs, load_mono, low_pass
from models.bundle import load_bundle
from models.dataset import read_dataset
from models.detection import count_episodes
from models.evaluate import window_scores
from models.frontend import FrontendConfig, LogMel
from models.inference import BundleModel
from models.signing import TrustedKeys

RATE = 16000
SNRS_DB = (10.0, 0.0)
LOW_PASS_HZ = 3800.0
SEED = 20261121


def _clips(data: Path, split: str) -> list[dict[str, Any]]:
    out = []
    for positive, selection in ((True, POSITIVE), (False, NEGATIVE)):
        for dataset_name, label in sorted(selection, key=str):
            for clip in read_dataset(data / dataset_name).split(split):
                if label is None or clip.label == label:
                    rate = clip.extra.get("orig_sample_rate", "")
                    out.append(
                        {
                            "samples": load_mono(clip.path),
                            "positive": positive,
                            "source": f"{dataset_name}/{clip.label}",
                            "group": f"{dataset_name}:{clip.group}",
                            "bandwidth": "8k-origin"
                            if rate == "8000"
                            else "full-band"
                            if rate
                            else "",
                        }
                    )
    return out


def _mix(cry: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    noise = np.resize(noise, cry.shape[0])
    gain = 10 ** ((level_dbfs(cry) - snr_db - level_dbfs(noise)) / 20)
    return np.clip(cry + noise * np.float32(gain), -1, 1).astype(np.float32)


def variants(test: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    rng = np.random.default_rng(SEED)
    negatives = [c for c in test if not c["positive"]]
    out = {"clean": test}
    for snr in SNRS_DB:
        out[f"mixed_{snr:g}dB"] = [
            {
                **c,
                "samples": _mix(
                    c["samples"], negatives[int(rng.integers(len(negatives)))]["samples"], snr
                ),
            }
            if c["positive"]
            else c
            for c in test
        ]
    out["lowpass_3.8kHz"] = [
        {**c, "samples": low_pass(c["samples"], RATE, LOW_PASS_HZ)} for c in test
    ]
    return out


def _baseline_features(clips: list[dict[str, Any]]) -> np.ndarray:
    logmel = LogMel(FrontendConfig())
    rows = []
    for c in clips:
        x = np.pad(c["samples"], (0, max(0, RATE - len(c["samples"]))))
        frames = logmel.frames(x)
        rows.append(np.concatenate([frames.mean(axis=0), frames.std(axis=0)]))
    return np.array(rows)


def _auc_report(truth: np.ndarray, scores: np.ndarray, clips: list[dict[str, Any]]) -> dict:
    groups = np.array([c["group"] for c in clips])

    def with_interval(members: np.ndarray, key: str) -> dict[str, Any]:
        t, s, g = truth[members], scores[members], groups[members]
        return {key: metrics.roc_auc(t, s), f"{key}_interval": metrics.roc_auc_interval(t, s, g)}

    report = with_interval(np.ones(len(clips), dtype=bool), "roc_auc")
    for band in ("8k-origin", "full-band"):
        members = np.array([(c["bandwidth"] == band) or not c["positive"] for c in clips])
        report |= with_interval(members, f"roc_auc_{band}")
    return report


def _lead(truth: np.ndarray, cnn: np.ndarray, baseline: np.ndarray, groups: np.ndarray) -> dict:
    """The network's ROC-AUC minus the baseline's, with a paired 95% group interval."""
    difference, interval = metrics.roc_auc_difference(truth, cnn, baseline, groups)
    return {"difference": difference, "interval": interval}


def _decision_agreement(
    bundle: Any, test: list[dict[str, Any]], label: str, roles: set[str]
) -> dict[str, Any]:
    """Decisions at the shipped threshold on the clean test clips, per runtime and precision,
    against ONNX INT8 (what evaluate reports): per window, and per clip as the edge decides
    (an event when 2 of 3 windows reach the threshold), with how far from the threshold, in
    logits, the windows they disagree on lie."""
    threshold = bundle.manifest.thresholds[label]
    scores = {}
    for runtime in ("onnx", "tflite"):
        for precision in ("int8", "float"):
            if (runtime if precision == "int8" else f"{runtime}_float") not in roles:
                continue
            model = BundleModel(bundle, runtime=runtime, precision=precision)  # type: ignore[arg-type]
            scores[f"{runtime}_{precision}"] = [
                window_scores(model, c["samples"], label) for c in test
            ]
    events = {
        name: np.array([count_episodes(list(s), threshold) > 0 for s in per_clip])
        for name, per_clip in scores.items()
    }
    reference = np.concatenate(scores["onnx_int8"])
    out = {}
    for name, per_clip in scores.items():
        differ = (np.concatenate(per_clip) >= threshold) != (reference >= threshold)
        distance = np.abs(metrics.logit(reference[differ]) - metrics.logit(threshold))
        out[name] = {
            "windows": len(reference),
            "disagreements": int(differ.sum()),
            "widest_disagreement_logits": round(float(distance.max(initial=0.0)), 3),
            "clips": len(per_clip),
            "event_disagreements": int((events[name] != events["onnx_int8"]).sum()),
        }
    return out


def _latency_ms(model: BundleModel, window: np.ndarray) -> float:
    for _ in range(20):
        model.scores(window)
    times = []
    for _ in range(300):
        start = time.perf_counter()
        model.scores(window)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, default=REPO / "models/pretrained/cry-detector")
    parser.add_argument("--trusted", type=Path, default=REPO / "models/pretrained/keys")
    parser.add_argument("--out", type=Path, default=REPO / "scripts/results/models.json")
    args = parser.parse_args()
    from sklearn.ensemble import HistGradientBoostingClassifier

    bundle = load_bundle(args.bundle, TrustedKeys.from_paths([args.trusted]))
    positive_label = next(iter(bundle.manifest.thresholds))
    print("loading the train and test splits ...")
    train, test = _clips(args.data, "train"), _clips(args.data, "test")
    baseline = HistGradientBoostingClassifier(random_state=0).fit(
        _baseline_features(train), np.array([c["positive"] for c in train])
    )
    models = {p: BundleModel(bundle, precision=p) for p in ("int8", "float")}
    results: dict[str, Any] = {"variants": {}, "test_clips": len(test)}
    for name, clips in variants(test).items():
        truth = np.array([c["positive"] for c in clips])
        baseline_scores = baseline.predict_proba(_baseline_features(clips))[:, 1]
        row = {"baseline_gbdt_logmel_stats": _auc_report(truth, baseline_scores, clips)}
        scores = {}
        for precision, model in models.items():
            scores[precision] = np.array(
                [
                    window_scores(model, c["samples"], positive_label).max()
                    for c in tqdm(clips, desc=f"{name} {precision}", leave=False)
                ]
            )
            row[f"cnn_{precision}"] = _auc_report(truth, scores[precision], clips)
        results["variants"][name] = row
        groups = np.array([c["group"] for c in clips])
        results.setdefault("cnn_int8_minus_baseline", {})[name] = _lead(
            truth, scores["int8"], baseline_scores, groups
        )
    window = models["int8"].logmel.windows(test[0]["samples"], 4000)[:1]
    results["models"] = {}
    roles = {entry.role for entry in bundle.manifest.files.values()}
    for runtime in ("onnx", "tflite"):
        for precision in ("int8", "float"):
            role = runtime if precision == "int8" else f"{runtime}_float"
            if role not in roles:
                continue
            model = BundleModel(bundle, runtime=runtime, precision=precision)  # type: ignore[arg-type]
            results["models"][f"cnn_{runtime}_{precision}"] = {
                "file_bytes": bundle.path(role).stat().st_size,  # type: ignore[arg-type]
                "parameters": bundle.manifest.training.get("parameters"),
                "latency_ms_per_window_1_thread": round(_latency_ms(model, window), 3),
            }
    results["decisions_vs_onnx_int8"] = _decision_agreement(bundle, test, positive_label, roles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    print(f"\nclip-level ROC-AUC on the dev test split ({len(test)} clips)")
    systems = list(next(iter(results["variants"].values())))
    print(f"{'variant':<16}" + "".join(f"{s:>28}" for s in systems))

    def cell(report: dict[str, Any], key: str) -> str:
        interval = report[f"{key}_interval"]
        bounds = f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
        return f"{report[key]:.4f}{bounds}".rjust(28)

    for name, row in results["variants"].items():
        print(f"{name:<16}" + "".join(cell(row[s], "roc_auc") for s in systems))
        for band in ("8k-origin", "full-band"):
            print(f"  {band:<14}" + "".join(cell(row[s], f"roc_auc_{band}") for s in systems))
    print("(95% intervals from redrawing whole recording groups)")
    for name, lead in results["cnn_int8_minus_baseline"].items():
        interval = lead["interval"]
        bounds = f" (paired 95% [{interval[0]:+.4f}, {interval[1]:+.4f}])" if interval else ""
        print(f"CNN INT8 minus baseline, {name}: {lead['difference']:+.4f}{bounds}")
    for name, m in results["models"].items():
        print(
            f"{name}: {m['file_bytes'] / 1024:.0f} KiB, {m['parameters']} parameters, "
            f"{m['latency_ms_per_window_1_thread']:.3f} ms per window (1 thread)"
        )
    for name, d in results["decisions_vs_onnx_int8"].items():
        print(
            f"{name} vs ONNX INT8 at the shipped threshold: {d['disagreements']} of "
            f"{d['windows']} test-window decisions differ (all within "
            f"{d['widest_disagreement_logits']} logits of it), {d['event_disagreements']} of "
            f"{d['clips']} clips' events"
        )
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
