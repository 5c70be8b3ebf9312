"""Compare cry-detector bundles on the validation windows the trainer selects on.

    .venv/bin/python scripts/compare_val.py --data ../shared/datasets BUNDLE [BUNDLE ...]

The same windows for every bundle: the `val` split at the edge's 0.25 s hop (silent windows of
cry clips gated out, as in training), clean and augmented once with the trainer's fixed seed
(mixtures, band limits, gain; the `cry-detector` recipe's augmentation). Window ROC-AUC of
every ONNX file (INT8 and float) on clean, augmented and both together, the last being the
measure `soundwarden-models train` selects epochs on. `test` is never read.

Then each later bundle against the first on the clean windows, INT8: the difference in window
ROC-AUC with a 95% interval from redrawing whole groups (recorders, recordings) for both
bundles at once. A single validation ROC-AUC moves by several hundredths with the recordings
drawn (one 62 s recording carries most of 1.1.0's loss); the paired difference is the
comparison the validation set can support.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import metrics
from models.bundle import load_bundle
from models.frontend import FrontendConfig, LogMel
from models.runtimes.onnx import OnnxRuntime
from models.signing import TrustedKeys
from models.training.data import (
    load_clips,
    training_augmenter,
    validation_features,
    windows_for,
)
from models.training.recipes import CRY_DETECTOR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with cry/, events/ ...")
    parser.add_argument("--trusted", type=Path, action="append", required=True)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    parser.add_argument("bundles", type=Path, nargs="+")
    args = parser.parse_args()
    recipe, positive = CRY_DETECTOR, 0
    clips = load_clips(args.data, recipe)
    train = windows_for(clips, "train", recipe, recipe.train_hop_s, positive)
    val = windows_for(clips, "val", recipe, recipe.eval_hop_s, positive)  # validation_features'
    groups = np.array([clips[w.clip].group for w in val])
    clean_int8: dict[Path, np.ndarray] = {}
    augmenter = training_augmenter(clips, train, recipe)
    trusted = TrustedKeys.from_paths(args.trusted)
    results = {}
    # Each bundle's own front end over the same audio: the augmentation draws from a generator
    # seeded the same way every time, so every bundle hears identical windows. Computed once
    # per distinct front end.
    features: dict[FrontendConfig, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    print(f"{'bundle':<40} {'file':<18} {'clean':>7} {'augmented':>10} {'both':>7}")
    for path in args.bundles:
        bundle = load_bundle(path, trusted)
        frontend = bundle.manifest.features
        if frontend not in features:
            features[frontend] = validation_features(clips, recipe, augmenter, LogMel(frontend))
        clean, augmented, y = features[frontend]
        truth = y == positive
        for role in ("onnx", "onnx_float"):
            runtime = OnnxRuntime(bundle.path(role), threads=2)
            a = runtime.run(clean[:, None])[:, positive]
            b = runtime.run(augmented[:, None])[:, positive]
            row = {
                "clean": metrics.roc_auc(truth, a),
                "augmented": metrics.roc_auc(truth, b),
                "both": metrics.roc_auc(np.concatenate([truth, truth]), np.concatenate([a, b])),
            }
            name = f"{bundle.manifest.name} {bundle.manifest.version}"
            if role == "onnx":
                clean_int8[path] = a
            results[f"{path} {role}"] = {"bundle": name, **row}
            print(
                f"{name:<40} {role:<18} {row['clean']:>7.4f} {row['augmented']:>10.4f} "
                f"{row['both']:>7.4f}"
            )
    differences = paired_differences(clean_int8, y == positive, groups)
    if args.out:
        args.out.write_text(
            json.dumps(
                {"windows": len(y), "results": results, "clean_int8_differences": differences},
                indent=2,
            )
            + "\n"
        )


def paired_differences(
    scores: dict[Path, np.ndarray], truth: np.ndarray, groups: np.ndarray
) -> dict[str, dict[str, float]]:
    """Each later bundle's clean window ROC-AUC minus the first's, with a 95% interval over
    resampled groups (the same draw for both bundles)."""
    (first, reference), *others = scores.items()
    out = {}
    for path, candidate in others:
        point, interval = metrics.roc_auc_difference(truth, candidate, reference, groups)
        assert interval is not None  # validation has dozens of recorders per class
        low, high = interval
        out[str(path)] = {"minus": str(first), "difference": point, "low": low, "high": high}
        print(f"{path} minus {first}, clean INT8: {point:+.4f} (95% [{low:+.4f}, {high:+.4f}])")
    return out


if __name__ == "__main__":
    main()
