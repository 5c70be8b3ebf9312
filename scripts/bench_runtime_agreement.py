"""How far a cry-detector's runtime files disagree near its threshold, on validation.

    .venv/bin/python scripts/bench_runtime_agreement.py --data ../shared/datasets \
        --trusted KEYS BUNDLE [BUNDLE ...] [--out JSON]

The edge runs whichever file its runtime loads (ONNX or TFLite, INT8 or float), and the issue
asks for identical event decisions on the test split. Whether a bundle can keep that depends on
how far its quantized files stray from the float network where decisions are made, and on how
many windows lie that close to the threshold. This measures both on the `val` clips (`test` is
never read): per file, the window logit error against ONNX float within 2 logits of the
threshold (95th percentile and largest), the TFLite INT8 error against ONNX INT8 there, how
many windows lie within that 95th percentile of the threshold, and the clips whose event (2 of
3 windows at the threshold, as the edge decides) differs from ONNX INT8's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_models import _clips, _decision_agreement

from models.bundle import load_bundle
from models.evaluate import window_scores
from models.inference import BundleModel
from models.metrics import logit
from models.signing import TrustedKeys

NEAR_LOGITS = 2.0
FILES = (("onnx", "int8"), ("onnx", "float"), ("tflite", "int8"), ("tflite", "float"))


def logits_of(bundle: Any, clips: list[dict[str, Any]], runtime: str, precision: str) -> Any:
    model = BundleModel(bundle, runtime=runtime, precision=precision)  # type: ignore[arg-type]
    scores = np.concatenate([window_scores(model, c["samples"], "cry") for c in clips])
    # Kept off 0 and 1 in float64 terms, where a saturated float32 score still has a logit.
    return logit(np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7))


def agreement(bundle: Any, clips: list[dict[str, Any]]) -> dict[str, Any]:
    threshold = float(logit(bundle.manifest.thresholds["cry"]))
    logits = {f"{r}_{p}": logits_of(bundle, clips, r, p) for r, p in FILES}
    near = np.abs(logits["onnx_float"] - threshold) < NEAR_LOGITS
    roles = {entry.role for entry in bundle.manifest.files.values()}
    events = _decision_agreement(bundle, clips, "cry", roles)

    def spread(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        error = np.abs(a[near] - b[near])
        return {
            "p95": round(float(np.percentile(error, 95)), 3),
            "max": round(float(error.max()), 3),
        }

    files = {name: spread(values, logits["onnx_float"]) for name, values in logits.items()}
    tflite = spread(logits["tflite_int8"], logits["onnx_int8"])
    margin = tflite["p95"]
    return {
        "threshold_logit": round(threshold, 3),
        "windows": len(near),
        "windows_near_threshold": int(near.sum()),
        "error_vs_onnx_float": files,
        "tflite_int8_vs_onnx_int8": tflite,
        "windows_within_that_p95_of_threshold": int(
            (np.abs(logits["onnx_int8"] - threshold) < margin).sum()
        ),
        "clips": len(clips),
        "clip_events_differing_from_onnx_int8": {
            name: d["event_disagreements"] for name, d in events.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the dev datasets")
    parser.add_argument("--trusted", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, default=REPO / "scripts/results/runtime-agreement.json")
    parser.add_argument("bundles", type=Path, nargs="+")
    args = parser.parse_args()
    trusted = TrustedKeys.from_paths(args.trusted)
    clips = _clips(args.data, "val")
    results = {}
    for path in args.bundles:
        bundle = load_bundle(path, trusted)
        results[f"{bundle.manifest.name} {bundle.manifest.version}"] = agreement(bundle, clips)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"validation, within {NEAR_LOGITS} logits of each bundle's threshold")
    print(
        f"{'bundle':<32} {'near':>5} {'INT8 ONNX p95/max':>18} {'TFLite vs ONNX INT8':>20} "
        f"{'within p95':>10} {'clip events differ':>18}"
    )
    for name, r in results.items():
        onnx, tflite = r["error_vs_onnx_float"]["onnx_int8"], r["tflite_int8_vs_onnx_int8"]
        differ = sum(r["clip_events_differing_from_onnx_int8"].values())
        print(
            f"{name:<32} {r['windows_near_threshold']:>5} {onnx['p95']:>8.3f}/{onnx['max']:<9.3f}"
            f" {tflite['p95']:>9.3f}/{tflite['max']:<10.3f} "
            f"{r['windows_within_that_p95_of_threshold']:>10} {differ:>18}"
        )
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
