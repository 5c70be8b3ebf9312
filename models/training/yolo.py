"""YOLOv8 classification on spectrogram images: the "full" cloud model.

ultralytics' `yolov8n-cls.yaml` or `yolov8s-cls.yaml` (`YOLO_CONFIGS`), trained from scratch and
offline on images rendered from the same front end as every other model. The exported bundle
wraps the network with that rendering, so it takes the bundle's log-mel windows like any other
model: evaluate, the benchmarks and the edge need no special case. Exported to ONNX float and
INT8 at a small image size for the edge.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import nn
from tqdm import tqdm

from models.bundle import Manifest
from models.frontend import LogMel
from models.training.data import (
    features_of,
    load_clips,
    subsample,
    training_augmenter,
    validation_features,
    windows_for,
)
from models.training.export import CALIBRATION_WINDOWS, export_bundle_files
from models.training.nets import parameter_count
from models.training.recipes import YOLO_CONFIGS, Recipe
from models.training.trainer import calibrate_threshold, start_run, write_recipe_bundle

IMAGE_RANGE_DB = 40.0  # window-mean normalised dB in [-40, 40] map to [0, 1]
_torchvision_schemas: torch.library.Library | None = None


def _register_missing_torchvision_ops() -> None:
    """Let the registry's torchvision import next to CPU torch.

    That torchvision is a CUDA build whose C++ operators do not load here; its Python side still
    registers fake kernels for `nms` and `qnms` at import, which fails while those operators are
    undefined. Defining their schemas (only when missing) lets it import. Classification never
    calls them, and a detection model would fail loudly on the missing kernel."""
    global _torchvision_schemas
    missing = [op for op in ("nms", "qnms") if not hasattr(torch.ops.torchvision, op)]
    if missing and _torchvision_schemas is None:
        _torchvision_schemas = torch.library.Library("torchvision", "FRAGMENT")  # type: ignore[no-untyped-call]
        for op in missing:
            _torchvision_schemas.define(  # type: ignore[no-untyped-call]
                f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
            )


def _ultralytics(config_dir: Path) -> Any:
    """ultralytics, offline: no downloads, no telemetry, settings in a folder of ours."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    _register_missing_torchvision_ops()
    import ultralytics
    from ultralytics import settings

    settings.update({"sync": False})  # type: ignore[no-untyped-call]
    return ultralytics


def features_to_images(features: torch.Tensor, size: int) -> torch.Tensor:
    """(n, 1, frames, mels) log-mel windows -> (n, 3, size, size) images in [0, 1]."""
    x = (features.clamp(-IMAGE_RANGE_DB, IMAGE_RANGE_DB) + IMAGE_RANGE_DB) / (2 * IMAGE_RANGE_DB)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.repeat(1, 3, 1, 1)


class YoloOnFeatures(nn.Module):
    """A trained YOLO classifier behind the spectrogram rendering: windows in, probabilities out."""

    def __init__(self, classifier: nn.Module, architecture: str, image_size: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.image_size = image_size
        self.spec = {"architecture": architecture, "image_size": image_size}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(features_to_images(features, self.image_size))
        return out


def _render(
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    names: list[str],
    folder: Path,
    size: int,
) -> None:
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(features), 256), desc=f"render {folder.name}", leave=False):
        batch = torch.from_numpy(features[start : start + 256, None])
        images = (features_to_images(batch, size)[:, 0].numpy() * 255).round().astype(np.uint8)
        for offset, image in enumerate(images):
            index = start + offset
            Image.fromarray(image).save(folder / names[labels[index]] / f"{index:06d}.png")


def _epoch_entry(trainer: Any) -> dict[str, float]:
    """What ultralytics' trainer knows after an epoch, in the shape of `train_recipe`'s history."""
    return {
        "epoch": trainer.epoch + 1,
        # The epoch's mean training loss, one entry per loss term (classification has one).
        "train_loss": sum(float(v) for v in trainer.tloss.values()),
        "val_accuracy": float(trainer.metrics.get("metrics/accuracy_top1", float("nan"))),
    }


def train_yolo(
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
    """`tflite_python` is accepted for a uniform trainer signature; YOLO gets no TFLite files
    (the converter environment has no ultralytics), which the training summary records.
    `on_epoch(entry, max epochs)` follows progress after each epoch (epoch, train loss,
    validation top-1 accuracy); raising in it stops the run."""
    if recipe.labels != sorted(recipe.labels):
        raise ValueError("ultralytics orders classes by folder name: recipe labels must be sorted")
    rng, run_dir = start_run(recipe, out_dir, threads)
    cfg = recipe.features
    positive = recipe.labels.index(recipe.positive)
    clips = load_clips(data_root, recipe)
    train_windows = windows_for(clips, "train", recipe, recipe.train_hop_s, positive)
    train_windows = subsample(train_windows, max_train_windows, rng)
    augmenter = training_augmenter(clips, train_windows, recipe)
    logmel = LogMel(cfg)
    # One augmented rendering of the training windows (ultralytics trains from image files).
    train_x, train_y = features_of(
        clips, train_windows, logmel, augmenter=augmenter, rng=rng, desc="train features"
    )
    val_clean, val_aug, val_y = validation_features(clips, recipe, augmenter, logmel)
    image_size = recipe.image_size
    images = run_dir / "images"
    _render(train_x, train_y, recipe.labels, images / "train", image_size)
    _render(val_clean, val_y, recipe.labels, images / "val", image_size)

    ultralytics = _ultralytics(run_dir / "ultralytics-config")
    config = YOLO_CONFIGS[recipe.architecture]
    yolo = ultralytics.YOLO(config)
    if on_epoch is not None:
        report = on_epoch  # bound for the closure, which mypy cannot see is not None

        def after_epoch(trainer: Any) -> None:
            report(_epoch_entry(trainer), trainer.epochs)

        yolo.add_callback("on_fit_epoch_end", after_epoch)
    yolo.train(
        data=str(images),
        epochs=epochs or recipe.epochs,
        patience=recipe.patience,
        imgsz=image_size,
        batch=recipe.batch_size,
        device="cpu",
        workers=0,
        seed=recipe.seed,
        deterministic=True,
        pretrained=False,
        amp=False,
        project=str(run_dir),
        name="yolo",
        exist_ok=True,
        plots=True,
        verbose=False,
        # Spectrograms are not photographs: no flips (time reversal), colour or erasing.
        fliplr=0.0,
        hsv_h=0.0,
        hsv_s=0.0,
        hsv_v=0.0,
        erasing=0.0,
        auto_augment=None,
    )
    best = ultralytics.YOLO(str(Path(yolo.trainer.best)))  # our own file, written just now
    classifier = best.model.float().eval()
    classifier.model[-1].export = True  # the Classify head returns probabilities only
    model = YoloOnFeatures(classifier, recipe.architecture, image_size).eval()

    calibration = train_x[
        rng.choice(len(train_x), min(CALIBRATION_WINDOWS, len(train_x)), replace=False)
    ]
    files = export_bundle_files(model, cfg.input_shape, calibration, run_dir, tflite_python=None)
    threshold, val_metrics = calibrate_threshold(
        recipe, files["model.onnx"][1], val_clean, val_aug, val_y, run_dir, threads=threads
    )
    training = {
        "recipe": recipe.model_dump(mode="json"),
        "architecture": f"ultralytics {config} from scratch, on "
        f"{image_size}x{image_size} renderings of the log-mel window",
        "parameters": parameter_count(model),
        "windows": {"train": len(train_windows), "val": len(val_y)},
        "selection": "ultralytics' best epoch by validation top-1 accuracy (clean val images)",
        "threshold_selection": "as the compact CNN: best val F1 within the false-alarm budget",
        "tflite": "not exported: the converter environment has no ultralytics",
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
