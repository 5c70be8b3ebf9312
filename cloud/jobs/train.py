"""Training jobs: retrain a model from the labelled clips, compare it with the deployed one on
the same held-out clips, and register it as a signed bundle.

The labelled clips are exported as a dataset folder (`<label>/<clip>.flac` + manifest.csv) whose
splits come from `cloud.splits` (by device or imported recording, never by clip), so the same
`models.training` code that made the shipped bundles trains here, selects on `val`, and the
comparison with the current model runs both through the edge's runtime on `test`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from cloud import registry
from cloud.core.config import Settings
from cloud.jobs.core import JobContext, job
from cloud.splits import SPLITS, split_of
from cloud.tables import Clip
from models.bundle import Manifest, load_bundle, sign_bundle, update_manifest
from models.dataset import write_manifest
from models.frontend import FrontendConfig
from models.training.recipes import RECIPES, YOLO_CONFIGS, Recipe, Source

DATASET = "labelled"
MIN_CLIPS_PER_LABEL_AND_SPLIT = 1
Architecture = Literal["compact_cnn", "conv_attention", "yolov8n_cls", "yolov8s_cls"]
# What the API's description and the console's form call each architecture.
ARCHITECTURES: dict[Architecture, str] = {
    "compact_cnn": "compact CNN (the edge's)",
    "conv_attention": "1D-CNN + attention",
    "yolov8n_cls": "YOLOv8n-cls on spectrogram images",
    "yolov8s_cls": "YOLOv8s-cls on spectrogram images (about 3.5x the parameters of n)",
}


class TrainParams(BaseModel):
    """What `POST /api/v1/jobs/train` takes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "cry-detector", pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="Bundle name."
    )
    labels: list[str] = Field(
        ["cry", "other"], min_length=2, description="Output labels, the positive one first."
    )
    architecture: Architecture = Field(
        "compact_cnn",
        description="; ".join(f"{key}: {name}" for key, name in ARCHITECTURES.items()) + ".",
    )
    epochs: int = Field(20, ge=1, le=500, description="Maximum epochs (early stopping on val).")
    version: str | None = Field(
        None,
        pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$",
        description="Bundle version; default `<current>+job<id>`.",
    )


def run_dir(settings: Settings, job_id: int) -> Path:
    """Where a training job's run (plots, history, metrics) is kept."""
    return settings.data_dir / "jobs" / str(job_id) / "out" / "run"


class TrainingStoppedError(Exception):
    """Raised between stages and epochs when the job is cancelled or the service stops."""


def export_dataset(ctx: JobContext, labels: list[str], root: Path) -> dict[str, dict[str, int]]:
    """Write every clip labelled with one of `labels` under `root/<label>/`, with its split,
    and return the counts per split and label."""
    counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    rows = []
    with ctx.sessions() as db:
        clips = db.execute(
            select(Clip.id, Clip.label, Clip.group_id, Clip.audio_key)
            .where(Clip.label.in_(labels))
            .order_by(Clip.id)
        ).all()
    for n, (clip_id, label, group_id, audio_key) in enumerate(clips, start=1):
        assert label is not None  # selected by label
        rel = f"{label}/{clip_id}.flac"
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(ctx.storage.get(audio_key))
        split = split_of(group_id)
        counts[split][label] += 1
        rows.append({"path": rel, "label": label, "split": split, "group": group_id})
        ctx.progress(0.1 * n / len(clips), f"exporting labelled clips ({n}/{len(clips)})")
    write_manifest(root, rows, ["path", "label", "split", "group"])
    table: dict[str, dict[str, int]] = {
        split: {label: counts[split][label] for label in labels} for split in SPLITS
    }
    short = [
        f"{split}/{label}"
        for split in SPLITS
        for label in labels
        if table[split][label] < MIN_CLIPS_PER_LABEL_AND_SPLIT
    ]
    if short:
        raise ValueError(
            f"not enough labelled clips to train and test honestly: none in {', '.join(short)} "
            f"(clips per split and label: {table}); splits follow devices and recordings, so "
            "label clips from more of them"
        )
    return table


def recipe_for(params: TrainParams) -> Recipe:
    """The shipped recipe of the same name (augmentation, front end, threshold budget) with
    the labelled clips as its only source; a default recipe for a new name."""
    sources = [Source(dataset=DATASET, labels=[label], target=label) for label in params.labels]
    base = RECIPES.get(params.name) or Recipe(
        name=params.name,
        labels=params.labels,
        positive=params.labels[0],
        sources=sources,
        features=FrontendConfig(normalisation="window_mean"),
    )
    # ultralytics orders classes by folder name.
    labels = sorted(params.labels) if params.architecture in YOLO_CONFIGS else params.labels
    return base.model_copy(
        update={
            "labels": labels,
            "positive": params.labels[0],
            "sources": sources,
            "architecture": params.architecture,
            "network_options": base.network_options if params.architecture == "compact_cnn" else {},
            "epochs": params.epochs,
        }
    )


@job("train")
def train(ctx: JobContext) -> dict[str, Any]:
    try:
        return _train(ctx)
    except TrainingStoppedError:
        return {"stopped": True}


def _train(ctx: JobContext) -> dict[str, Any]:
    from models.evaluate import paired_difference, score, summarise
    from models.training.trainer import train_recipe
    from models.training.yolo import train_yolo

    params = TrainParams.model_validate(ctx.params)
    work = ctx.settings.data_dir / "jobs" / str(ctx.job_id)
    shutil.rmtree(work, ignore_errors=True)  # a re-run after a shutdown starts clean
    data = work / "data" / DATASET
    counts = export_dataset(ctx, params.labels, data)
    ctx.log(f"labelled clips per split: {counts}")

    with ctx.sessions() as db:
        deployed = registry.current(db, params.name)
    version = params.version or f"{deployed.version if deployed else '0.1.0'}+job{ctx.job_id}"
    recipe = recipe_for(params)

    def on_epoch(entry: dict[str, float], max_epochs: int) -> None:
        epoch = int(entry["epoch"])
        # The compact CNNs report validation ROC-AUC, YOLO its top-1 accuracy.
        measures = ", ".join(
            f"{name.replace('_', ' ')} {value:.4f}"
            for name, value in entry.items()
            if name in ("train_loss", "val_roc_auc", "val_accuracy")
        )
        ctx.progress(0.1 + 0.7 * epoch / max_epochs, f"epoch {epoch}/{max_epochs}: {measures}")
        ctx.log(ctx.message)
        if ctx.cancelled():
            raise TrainingStoppedError

    _stage(ctx, 0.1, f"training {recipe.architecture}")
    trainer = train_yolo if recipe.architecture in YOLO_CONFIGS else train_recipe
    bundle_dir, manifest = trainer(
        recipe,
        data.parent,
        work / "out",
        version=version,
        epochs=params.epochs,
        on_epoch=on_epoch,
    )

    _stage(ctx, 0.85, "evaluating on the held-out test clips")
    # Signed here so it can be opened (and so evaluated) like any bundle; the manifest then
    # gains its test metrics and is signed again on registration.
    sign_bundle(bundle_dir, registry.cloud_signing_key(ctx.settings))
    scores = score(load_bundle(bundle_dir, registry.trusted_keys(ctx.settings)), data)
    test = summarise(scores)
    comparison: dict[str, Any] = {"new": _summary(test)}
    if deployed is not None and deployed.labels == manifest.labels:
        before = score(registry.open_bundle(ctx.settings, deployed), data)
        comparison["deployed"] = {"version": deployed.version, **_summary(summarise(before))}
        # A few labelled clips decide little: the change with the interval it really has.
        comparison["difference"] = paired_difference(scores, before)
    update_manifest(bundle_dir, metrics={**manifest.metrics, "test": test})

    _stage(ctx, 0.95, "signing and registering")
    with ctx.sessions() as db:
        row = registry.register(db, ctx.settings, bundle_dir, sign=True, job_id=ctx.job_id)
        db.commit()
    run = run_dir(ctx.settings, ctx.job_id)
    ctx.progress(1.0, f"registered {row.name} {row.version}")
    return {
        "model": {"name": row.name, "version": row.version},
        "counts": counts,
        "threshold": _threshold(manifest),
        "comparison": comparison,
        "plots": sorted(p.name for p in run.glob("*.png")),
        "history": _history(run),
    }


def _stage(ctx: JobContext, fraction: float, message: str) -> None:
    """The start of a stage: a checkpoint (a cancelled job stops here, before it registers a
    model nobody wants), reported and logged at once, since progress is written at most every
    PROGRESS_INTERVAL_S and the next report may be minutes away (features, a YOLO run)."""
    if ctx.cancelled():
        raise TrainingStoppedError
    ctx.progress(fraction, message)
    ctx.log(message)
    ctx.flush()


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "clip": {k: report["clip"][k] for k in ("roc_auc", "accuracy", "macro_f1")},
        "window_roc_auc": report["window"]["roc_auc"],
        "per_class": report["clip"]["per_class"],
        "confusion": report["clip"]["confusion"],
        "false_alarms_per_hour": report["false_alarms"]["per_hour"],
        "majority_baseline": report["clip"]["majority_baseline"],
    }


def _threshold(manifest: Manifest) -> float:
    return next(iter(manifest.thresholds.values()))


def _history(run: Path) -> list[dict[str, float]]:
    path = run / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []
