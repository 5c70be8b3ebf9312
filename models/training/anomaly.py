"""Train an anomaly recipe: a convolutional autoencoder on normal sounds only.

Score = mean squared reconstruction error of a window (in the exported graph). The threshold
is calibrated on validation normals only: 10 % above the highest validation window score, so
that normal operation, as far as validation shows it, raises nothing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.bundle import Manifest
from models.frontend import LogMel
from models.runtimes.onnx import OnnxRuntime
from models.training import plots
from models.training.data import batches, features_of, load_clips, subsample, windows_for
from models.training.export import CALIBRATION_WINDOWS, export_bundle_files
from models.training.nets import ConvAutoencoder, parameter_count
from models.training.recipes import Recipe
from models.training.trainer import start_run, write_recipe_bundle

THRESHOLD_MARGIN = 1.1


def train_anomaly(
    recipe: Recipe,
    data_root: Path,
    out_dir: Path,
    *,
    version: str,
    epochs: int | None = None,
    max_train_windows: int | None = None,
    threads: int = 2,
    tflite_python: Path | None = None,
) -> tuple[Path, Manifest]:
    rng, run_dir = start_run(recipe, out_dir, threads)
    cfg = recipe.features
    positive = recipe.labels.index(recipe.positive)
    logmel = LogMel(cfg)
    clips = load_clips(data_root, recipe)
    train_x, _ = features_of(
        clips,
        subsample(
            windows_for(clips, "train", recipe, recipe.train_hop_s, positive),
            max_train_windows,
            rng,
        ),
        logmel,
        desc="train features",
    )
    val_x, _ = features_of(
        clips,
        windows_for(clips, "val", recipe, recipe.eval_hop_s, positive),
        logmel,
        desc="val features",
    )
    model = ConvAutoencoder(mean=float(train_x.mean()), std=float(train_x.std()))
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=1e-4)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"loss": np.inf, "epoch": 0, "state": None}
    max_epochs = epochs or recipe.epochs
    for epoch in (progress := tqdm(range(1, max_epochs + 1), desc="epochs", unit="epoch")):
        model.train()
        total = 0.0
        for idx in batches(len(train_x), recipe.batch_size, rng):
            optimiser.zero_grad()
            loss = model(torch.from_numpy(train_x[idx, None])).mean()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_loss = float(model(torch.from_numpy(val_x[:, None])).mean())
        history.append({"epoch": epoch, "train_loss": total / len(train_x), "val_loss": val_loss})
        progress.set_postfix(train=f"{total / len(train_x):.4f}", val=f"{val_loss:.4f}")
        if val_loss < best["loss"]:
            best = {"loss": val_loss, "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        elif epoch - best["epoch"] >= recipe.patience:
            break
    model.load_state_dict(best["state"])
    model.eval()

    calibration = train_x[
        rng.choice(len(train_x), min(CALIBRATION_WINDOWS, len(train_x)), replace=False)
    ]
    files = export_bundle_files(
        model, cfg.input_shape, calibration, run_dir, tflite_python=tflite_python
    )
    int8_path = files["model.onnx"][1]

    val_scores = OnnxRuntime(int8_path, threads=threads).run(val_x[:, None])[:, 0]
    threshold = float(val_scores.max() * THRESHOLD_MARGIN)
    val_metrics = {
        "windows": len(val_x),
        "score_quantiles": {
            f"q{q}": float(np.quantile(val_scores, q / 100)) for q in (50, 90, 99, 100)
        },
    }
    plots.training_curves(history, run_dir / "training_curves.png")
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"val": val_metrics}, indent=2) + "\n")
    training = {
        "recipe": recipe.model_dump(mode="json"),
        "architecture": recipe.architecture,
        "parameters": parameter_count(model),
        "windows": {"train": len(train_x), "val": len(val_x)},
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "selection": "lowest validation reconstruction error (normals only)",
        "threshold_selection": f"{THRESHOLD_MARGIN} x the highest validation window score",
        "quantization": "static QDQ INT8 for the convolutions; the error computation in float",
    }
    return write_recipe_bundle(
        recipe,
        out_dir,
        version=version,
        threshold=threshold,
        files=files,
        training=training,
        val_metrics=val_metrics,
    )
