"""Train a recipe into an unsigned bundle: model selection on `val` only, `test` never read.

Writes next to the bundle a run folder with `metrics.json`, `history.json` and PNGs (training
curves, validation confusion matrix, ROC and PR curves).
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from models import metrics
from models.bundle import FileRole, Manifest, write_bundle
from models.detection import count_episodes
from models.frontend import LogMel
from models.reference import REFERENCE_NAME, write_reference
from models.runtimes.onnx import OnnxRuntime
from models.training import plots
from models.training.data import (
    ClipAudio,
    Window,
    batches,
    features_of,
    load_clips,
    subsample,
    training_augmenter,
    validation_features,
    windows_for,
)
from models.training.export import CALIBRATION_WINDOWS, export_bundle_files
from models.training.nets import Classifier, build, parameter_count
from models.training.recipes import Recipe


def start_run(recipe: Recipe, out_dir: Path, threads: int) -> tuple[np.random.Generator, Path]:
    """What every trainer does first: fix the thread count and every seed, make `out_dir/run`.
    Returns the run's numpy generator and folder."""
    torch.set_num_threads(threads)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    run_dir = out_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return np.random.default_rng(recipe.seed), run_dir


def write_recipe_bundle(
    recipe: Recipe,
    out_dir: Path,
    *,
    version: str,
    threshold: float,
    files: dict[str, tuple[FileRole, Path]],
    training: dict[str, Any],
    val_metrics: dict[str, Any],
) -> tuple[Path, Manifest]:
    """The unsigned bundle folder `out_dir/<recipe name>` every trainer ends with, carrying
    reference windows scored by each of its runtime files (see `models.reference`)."""
    bundle_dir = out_dir / recipe.name
    reference = write_reference(out_dir / "run" / REFERENCE_NAME, recipe.features, files)
    manifest = write_bundle(
        bundle_dir,
        name=recipe.name,
        version=version,
        task=recipe.task,
        labels=recipe.labels,
        thresholds={recipe.positive: round(threshold, 6)},
        features=recipe.features,
        files={**files, REFERENCE_NAME: ("reference", reference)},
        training=training,
        metrics={"val": val_metrics},
    )
    return bundle_dir, manifest


def calibrate_threshold(
    recipe: Recipe,
    int8_path: Path,
    val_clean: npt.NDArray[np.float32],
    val_aug: npt.NDArray[np.float32],
    val_y: npt.NDArray[np.int64],
    run_dir: Path,
    *,
    threads: int,
) -> tuple[float, dict[str, Any]]:
    """The event threshold and the validation metrics of the shipped INT8 model, with plots.

    The threshold is the best F1 on the clean validation windows among thresholds whose false
    alarms on the validation negatives, played as one stream through the edge's episode
    logic, stay within the recipe's budget."""
    positive = recipe.labels.index(recipe.positive)
    runtime = OnnxRuntime(int8_path, threads=threads)
    int8_val = runtime.run(val_clean[:, None])[:, positive]
    negative_stream = int8_val[val_y != positive].tolist()
    negative_hours = len(negative_stream) * recipe.eval_hop_s / 3600
    threshold = metrics.best_f1_threshold(
        val_y == positive,
        int8_val,
        allowed=lambda t: (
            count_episodes(negative_stream, t) <= recipe.max_false_alarms_per_hour * negative_hours
        ),
    )
    predicted = np.where(int8_val >= threshold, positive, 1 - positive)
    val_metrics = {
        "windows": len(val_y),
        "roc_auc": metrics.roc_auc(val_y == positive, int8_val),
        "roc_auc_augmented": metrics.roc_auc(
            val_y == positive, runtime.run(val_aug[:, None])[:, positive]
        ),
        **metrics.classification_report(val_y, predicted, recipe.labels),
    }
    plots.confusion(
        np.array(val_metrics["confusion"]),
        recipe.labels,
        run_dir / "val_confusion.png",
        "validation windows, INT8, at threshold",
    )
    plots.roc_pr(val_y == positive, int8_val, run_dir / "val_roc_pr.png", "validation windows")
    return threshold, val_metrics


def source_balanced_weights(clips: list[ClipAudio], windows: list[Window]) -> npt.NDArray[Any]:
    """Loss weight per window: every class weighs the same in total, and within a class every
    source (dataset/label) too, so 36 music clips count as much as 1157 spoken digits."""
    sources = [(clips[w.clip].target, clips[w.clip].source) for w in windows]
    per_source = Counter(sources)
    per_class = {t: len({s for tt, s in per_source if tt == t}) for t, _ in per_source}
    weights = np.array([1.0 / (per_source[k] * per_class[k[0]]) for k in sources])
    scaled: npt.NDArray[Any] = (weights * len(windows) / weights.sum()).astype(np.float32)
    return scaled


def _predict(model: nn.Module, x: npt.NDArray[np.float32], batch: int = 256) -> npt.NDArray[Any]:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i : i + batch, None])).numpy())
    return np.concatenate(out)


def train_recipe(
    recipe: Recipe,
    data_root: Path,
    out_dir: Path,
    *,
    version: str,
    epochs: int | None = None,
    max_train_windows: int | None = None,
    threads: int = 2,
    tflite_python: Path | None = None,
    on_epoch: Callable[[dict[str, float], int], None] | None = None,
) -> tuple[Path, Manifest]:
    """Train, select on val, export float + INT8 ONNX, pick the threshold on val, write the
    bundle folder `out_dir/<name>` (unsigned) and the run folder `out_dir/run`. With
    `tflite_python` (the converter environment's interpreter) the bundle gets TFLite too.
    `on_epoch(history entry, max epochs)` follows progress; raising in it stops the run."""
    rng, run_dir = start_run(recipe, out_dir, threads)
    cfg = recipe.features
    positive = recipe.labels.index(recipe.positive)

    clips = load_clips(data_root, recipe)
    train_windows = windows_for(clips, "train", recipe, recipe.train_hop_s, positive)
    train_windows = subsample(train_windows, max_train_windows, rng)
    augmenter = training_augmenter(clips, train_windows, recipe)
    logmel = LogMel(cfg)
    val_clean, val_aug, val_y = validation_features(clips, recipe, augmenter, logmel)
    val_x, val_t = np.concatenate([val_clean, val_aug]), np.concatenate([val_y, val_y])

    train_targets = np.array([clips[w.clip].target for w in train_windows])
    counts = np.bincount(train_targets, minlength=len(recipe.labels))
    window_weights = torch.from_numpy(source_balanced_weights(clips, train_windows))
    model = build(
        {
            "architecture": recipe.architecture,
            "n_labels": len(recipe.labels),
            **recipe.network_options,
        }
    )
    if not isinstance(model, Classifier):
        raise ValueError(f"{recipe.architecture} is not a classifier")
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=1e-3)
    max_epochs = epochs or recipe.epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max_epochs)
    loss_fn = nn.CrossEntropyLoss(reduction="none")

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"auc": -1.0, "loss": np.inf, "epoch": 0, "state": None}
    last_train_x = val_clean
    progress = tqdm(range(1, max_epochs + 1), desc="epochs", unit="epoch")
    for epoch in progress:
        x, y = features_of(
            clips,
            train_windows,
            logmel,
            augmenter=augmenter,
            rng=rng,
            desc=f"epoch {epoch} features",
        )
        last_train_x = x  # unmasked: the INT8 calibration set is drawn from the last epoch's
        x = augmenter.mask(x, rng)
        model.train()
        total = 0.0
        for idx in batches(len(x), recipe.batch_size, rng):
            optimiser.zero_grad()
            per_window = loss_fn(
                model.logits(torch.from_numpy(x[idx, None])), torch.from_numpy(y[idx])
            )
            weights = window_weights[idx]
            loss = (per_window * weights).sum() / weights.sum()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        schedule.step()
        probs = _predict(model, val_x)
        val_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(val_t)), val_t], 1e-7, 1))))
        val_auc = metrics.roc_auc(val_t == positive, probs[:, positive])
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(x),
                "val_loss": val_loss,
                "val_roc_auc": val_auc,
            }
        )
        progress.set_postfix(train_loss=f"{total / len(x):.4f}", val_auc=f"{val_auc:.4f}")
        if on_epoch is not None:
            on_epoch(history[-1], max_epochs)
        if val_auc > best["auc"] or (val_auc == best["auc"] and val_loss < best["loss"]):
            best = {
                "auc": val_auc,
                "loss": val_loss,
                "epoch": epoch,
                "state": copy.deepcopy(model.state_dict()),
            }
        elif epoch - best["epoch"] >= recipe.patience:
            break
    model.load_state_dict(best["state"])
    model.eval()

    calibration = last_train_x[
        rng.choice(len(last_train_x), min(CALIBRATION_WINDOWS, len(last_train_x)), replace=False)
    ]
    files = export_bundle_files(
        model, cfg.input_shape, calibration, run_dir, tflite_python=tflite_python
    )
    threshold, val_metrics = calibrate_threshold(
        recipe, files["model.onnx"][1], val_clean, val_aug, val_y, run_dir, threads=threads
    )
    plots.training_curves(history, run_dir / "training_curves.png")

    training = {
        "recipe": recipe.model_dump(mode="json"),
        "architecture": recipe.architecture,
        "parameters": parameter_count(model),
        "windows": {"train": len(train_windows), "val": len(val_y)},
        "train_class_counts": dict(zip(recipe.labels, counts.tolist(), strict=True)),
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "selection": "val ROC-AUC on clean + augmented validation windows",
        "threshold_selection": "max F1 on clean validation windows (INT8 model) among "
        f"thresholds with <= {recipe.max_false_alarms_per_hour} false alarms per hour on the "
        "validation negatives streamed through models.detection",
        "loss_weighting": "source-balanced: equal total weight per class and per source",
        "positive_window_gate": f"dropped if > {recipe.energy_gate_db} dB below the clip's "
        f"loudest window or below {recipe.min_level_dbfs} dBFS",
        "quantization": "static QDQ, U8 activations, S8 per-channel weights, reduce_range, "
        f"{len(calibration)} augmented training windows for calibration",
    }
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"val": val_metrics}, indent=2) + "\n")
    return write_recipe_bundle(
        recipe,
        out_dir,
        version=version,
        threshold=threshold,
        files=files,
        training=training,
        val_metrics=val_metrics,
    )
