"""Compare cry-detector bundles on the validation windows the trainer selects on.

    .venv/bin/python scripts/compare_val.py --data ../shared/datasets BUNDLE [BUNDLE ...]

The same windows for every bundle: the `val` split at the edge's 0.25 s hop (silent windows of
cry clips gated out, as in training), clean and augmented once with the trainer's fixed seed
(mixtures, band limits, gain; the `cry-detector` recipe's augmentation). Window ROC-AUC of
every ONNX file (INT8 and float) on clean, augmented and both together, the last being the
measure `soundwarden-models train` selects epochs on. `test` is never read.
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
            results[f"{path} {role}"] = {"bundle": name, **row}
            print(
                f"{name:<40} {role:<18} {row['clean']:>7.4f} {row['augmented']:>10.4f} "
                f"{row['both']:>7.4f}"
            )
    if args.out:
        args.out.write_text(json.dumps({"windows": len(y), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
