"""Pictures of a training run: curves, confusion matrix, ROC and PR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from models import metrics


def training_curves(history: list[dict[str, float]], out: Path) -> None:
    epochs = [h["epoch"] for h in history]
    with_auc = "val_roc_auc" in history[0]
    fig, axes = plt.subplots(1, 2 if with_auc else 1, figsize=(10 if with_auc else 5, 3.5))
    ax_loss = axes[0] if with_auc else axes
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    if with_auc:
        axes[1].plot(epochs, [h["val_roc_auc"] for h in history], color="tab:green")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("val ROC-AUC (clean + augmented)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def confusion(matrix: npt.NDArray[Any], labels: list[str], out: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def roc_pr(positive: npt.NDArray[Any], scores: npt.NDArray[Any], out: Path, title: str) -> None:
    fpr, tpr, _ = metrics.roc_curve(positive, scores)
    precision, recall, _ = metrics.precision_recall_curve(positive, scores)
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax_roc.plot(fpr, tpr)
    ax_roc.set_xlabel("false positive rate")
    ax_roc.set_ylabel("true positive rate")
    ax_roc.set_title(f"ROC, AUC {metrics.roc_auc(positive, scores):.4f}", fontsize=9)
    ax_pr.plot(recall, precision)
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_title(f"precision-recall ({title})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
