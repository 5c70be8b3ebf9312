"""`soundwarden-models evaluate`: a bundle against a labelled dataset folder, through the
same runtime and front end the edge uses (never torch).

Window level: every 1 s window at the edge's 0.25 s hop; windows of a positive clip that are
silence between cries (`models.audio.energy_gate`, the gate training uses)
count neither as hits nor as misses. Clip level: a clip's score is its highest window score.
False alarms per hour: every negative clip of the split played as one continuous stream
through the episode logic of `models.detection`, with the rate a clean count still allows (no
false alarm in 6 minutes of negatives proves little about a target of 0.5 per hour).

Each ROC-AUC comes with a 95% interval from redrawing whole manifest groups (recorders,
speakers, recordings), and the window level says which groups its ranking loses on: a few
hundred test clips from a few dozen recorders leave a wide margin, and one long recording can
carry most of the loss.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models import metrics
from models.audio import (
    SILENCE_BELOW_PEAK_DB,
    SILENCE_FLOOR_DBFS,
    energy_gate,
    load_mono,
)
from models.bundle import Bundle, Manifest
from models.dataset import Clip, Dataset, read_dataset
from models.detection import count_episodes
from models.inference import BundleModel

EDGE_HOP_S = 0.25
MAX_SUBGROUP_VALUES = 12
LOSS_GROUPS_SHOWN = 5


class EvaluationError(ValueError):
    pass


def _require_bundle_labels(dataset: Dataset, manifest: Manifest, data_dir: Path) -> None:
    if set(dataset.labels) != set(manifest.labels):
        raise EvaluationError(
            f"{data_dir}: label folders {dataset.labels} do not match the bundle's labels "
            f"{manifest.labels}; make one folder per bundle label"
        )


def window_scores(model: BundleModel, samples: np.ndarray, label: str) -> np.ndarray:
    """`label`'s score for every window at the edge's hop (a short clip is zero-padded)."""
    cfg = model.manifest.features
    padded = np.pad(samples, (0, max(0, cfg.window_samples - len(samples))))
    hop = int(EDGE_HOP_S * cfg.sample_rate)
    scores: np.ndarray = model.scores(model.logmel.windows(padded, hop))[
        :, model.manifest.labels.index(label)
    ]
    return scores


def sounding_windows(samples: np.ndarray, count: int, window: int, hop: int) -> np.ndarray:
    """Which of the `count` windows `hop` apart that `window_scores` scored carry sound, not
    the silence between cries (the gate training uses). Counted from the scores, not the clip
    length: the front end also scores a last window whose final samples no frame reaches."""
    starts = [i * hop for i in range(count)]
    gate: np.ndarray = energy_gate(
        samples, starts, window, below_peak_db=SILENCE_BELOW_PEAK_DB, min_dbfs=SILENCE_FLOOR_DBFS
    )
    return gate


@dataclass(frozen=True)
class Scores:
    """What a bundle made of a split: the windows `evaluate` counts (silence inside cries left
    out) with their recordings' groups, each clip's highest window, and the negative audio as
    one stream."""

    bundle: Bundle
    data_dir: Path
    split: str | None
    runtime: str
    precision: str
    windows: np.ndarray
    window_truth: np.ndarray
    window_groups: np.ndarray
    per_clip: list[dict[str, Any]]
    negative_stream: list[float]
    negative_seconds: float


def score(
    bundle: Bundle,
    data_dir: Path,
    *,
    split: str | None = "test",
    runtime: str = "onnx",
    precision: str = "int8",
) -> Scores:
    manifest = bundle.manifest
    dataset = read_dataset(data_dir)
    _require_bundle_labels(dataset, manifest, data_dir)
    clips = dataset.split(split) if split else dataset.clips
    if not clips:
        raise EvaluationError(f"{data_dir}: no clips in split {split!r}")
    positive_label = next(iter(manifest.thresholds))
    model = BundleModel(bundle, runtime=runtime, precision=precision)  # type: ignore[arg-type]
    cfg = manifest.features
    window, hop = cfg.window_samples, int(EDGE_HOP_S * cfg.sample_rate)

    per_clip: list[dict[str, Any]] = []
    kept_scores: list[np.ndarray] = []
    window_truth: list[np.ndarray] = []
    window_groups: list[str] = []
    negative_stream: list[float] = []
    negative_seconds = 0.0
    for clip in tqdm(clips, desc="evaluate", unit="clip"):
        samples = load_mono(clip.path, cfg.sample_rate)
        scores = window_scores(model, samples, positive_label)
        is_pos = clip.label == positive_label
        kept = scores[sounding_windows(samples, len(scores), window, hop)] if is_pos else scores
        kept_scores.append(kept)
        window_truth.append(np.full(len(kept), is_pos))
        window_groups += [_group(clip)] * len(kept)
        if not is_pos:
            negative_stream += scores.tolist()
            negative_seconds += len(samples) / cfg.sample_rate
        per_clip.append({"clip": clip, "score": float(scores.max()), "positive": is_pos})
    return Scores(
        bundle=bundle,
        data_dir=data_dir,
        split=split,
        runtime=runtime,
        precision=precision,
        windows=np.concatenate(kept_scores),
        window_truth=np.concatenate(window_truth),
        window_groups=np.array(window_groups),
        per_clip=per_clip,
        negative_stream=negative_stream,
        negative_seconds=negative_seconds,
    )


def evaluate(
    bundle: Bundle,
    data_dir: Path,
    *,
    split: str | None = "test",
    runtime: str = "onnx",
    precision: str = "int8",
) -> dict[str, Any]:
    return summarise(score(bundle, data_dir, split=split, runtime=runtime, precision=precision))


def summarise(scored: Scores) -> dict[str, Any]:
    manifest = scored.bundle.manifest
    (positive_label, threshold), *_ = manifest.thresholds.items()
    pos = manifest.labels.index(positive_label)
    neg = 1 - pos
    per_clip = scored.per_clip
    w_scores, w_truth, w_groups = scored.windows, scored.window_truth, scored.window_groups
    c_scores, c_truth, c_groups = _clip_arrays(per_clip)

    def report(truth: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
        labels_true = np.where(truth, pos, neg)
        predicted = np.where(scores >= threshold, pos, neg)
        majority = pos if truth.mean() > 0.5 else neg
        baseline = metrics.classification_report(
            labels_true, np.full(len(truth), majority), manifest.labels
        )
        return {
            "count": len(truth),
            "positives": int(truth.sum()),
            "roc_auc": metrics.roc_auc(truth, scores),
            "roc_auc_interval": metrics.roc_auc_interval(truth, scores, groups),
            **metrics.classification_report(labels_true, predicted, manifest.labels),
            "majority_baseline": {
                "predicts": manifest.labels[majority],
                "accuracy": baseline["accuracy"],
                "macro_f1": baseline["macro_f1"],
            },
        }

    episodes = count_episodes(scored.negative_stream, threshold)
    hours = scored.negative_seconds / 3600
    return {
        "bundle": {"name": manifest.name, "version": manifest.version},
        "runtime": scored.runtime,
        "precision": scored.precision,
        "data": str(scored.data_dir),
        "split": scored.split,
        "threshold": threshold,
        "window": {
            **report(w_truth, w_scores, w_groups),
            "ranking_loss_by_group": _ranking_loss_by_group(w_truth, w_scores, w_groups),
        },
        "clip": report(c_truth, c_scores, c_groups),
        "false_alarms": {
            "episodes": episodes,
            "negative_hours": round(hours, 4),
            "per_hour": episodes / hours if hours else float("nan"),
            "per_hour_upper_95": metrics.poisson_rate_upper(episodes, hours),
        },
        "subgroups": _subgroups(per_clip, threshold),
    }


def paired_difference(new: Scores, old: Scores) -> dict[str, dict[str, float | None]] | None:
    """`new`'s window and clip ROC-AUC minus `old`'s on the same split, each with a 95%
    interval from redrawing the same groups for both models: whether a change is more than the
    luck of which recordings were labelled (no interval, None bounds, with one group per
    class). None when the two did not score the same windows (another window length or sample
    rate)."""
    if not (
        np.array_equal(new.window_truth, old.window_truth)
        and np.array_equal(new.window_groups, old.window_groups)
        and [c["clip"] for c in new.per_clip] == [c["clip"] for c in old.per_clip]
    ):
        return None
    new_clip_scores, clip_truth, clip_groups = _clip_arrays(new.per_clip)
    old_clip_scores = _clip_arrays(old.per_clip)[0]
    out = {}
    for level, args in (
        ("window", (new.window_truth, new.windows, old.windows, new.window_groups)),
        ("clip", (clip_truth, new_clip_scores, old_clip_scores, clip_groups)),
    ):
        difference, interval = metrics.roc_auc_difference(*args)
        out[f"{level}_roc_auc"] = {
            "difference": difference,
            "low": interval[0] if interval else None,
            "high": interval[1] if interval else None,
        }
    return out


def _clip_arrays(per_clip: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip scores, truth and groups."""
    return (
        np.array([c["score"] for c in per_clip]),
        np.array([c["positive"] for c in per_clip]),
        np.array([_group(c["clip"]) for c in per_clip]),
    )


def _group(clip: Clip) -> str:
    return clip.group or str(clip.path)


def _ranking_loss_by_group(
    truth: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """The groups carrying most of 1 - ROC-AUC, on each side: negatives scored over cries and
    cries scored under negatives. A side's shares over all its groups sum to 1 - ROC-AUC."""
    shares = metrics.auc_loss_shares(truth, scores)
    out = {}
    for side, members in (("negatives", ~truth), ("positives", truth)):
        totals: dict[str, list[float]] = defaultdict(list)
        for group, share in zip(groups[members], shares[members], strict=True):
            totals[group].append(float(share))
        worst = sorted(totals.items(), key=lambda kv: -sum(kv[1]))[:LOSS_GROUPS_SHOWN]
        out[side] = [
            {"group": g, "windows": len(v), "share": sum(v)} for g, v in worst if sum(v) > 0
        ]
    return out


def _subgroups(per_clip: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Clip-level results per value of each manifest column with a few distinct values.

    A value held by one class only (e.g. a cry recorder's sample rate) is scored against all
    clips of the other class."""
    columns: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, c in enumerate(per_clip):
        clip: Clip = c["clip"]
        for column, value in clip.extra.items():
            if value:
                columns[column][value].append(i)
    scores = np.array([c["score"] for c in per_clip])
    truth = np.array([c["positive"] for c in per_clip])
    out: dict[str, Any] = {}
    for column, values in sorted(columns.items()):
        shared = any(len(idx) > 1 for idx in values.values())  # not a per-clip identifier
        if not shared or not 2 <= len(values) <= MAX_SUBGROUP_VALUES:
            continue
        out[column] = {}
        for value, idx in sorted(values.items()):
            members = np.zeros(len(per_clip), dtype=bool)
            members[idx] = True
            if truth[members].all():
                members |= ~truth
            elif not truth[members].any():
                members |= truth
            sub_truth, sub_scores = truth[members], scores[members]
            out[column][value] = {
                "positives": int(sub_truth.sum()),
                "negatives": int((~sub_truth).sum()),
                "roc_auc": metrics.roc_auc(sub_truth, sub_scores),
                "recall": float((sub_scores[sub_truth] >= threshold).mean())
                if sub_truth.any()
                else float("nan"),
                "false_positive_rate": float((sub_scores[~sub_truth] >= threshold).mean())
                if (~sub_truth).any()
                else float("nan"),
            }
    return out


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"{result['bundle']['name']} {result['bundle']['version']} on {result['data']} "
        f"[{result['split'] or 'all'}] via {result['runtime']} {result['precision']}, "
        f"threshold {result['threshold']:.4f}",
        f"{'level':<7} {'n':>6} {'pos':>5} {'ROC-AUC':>8} {'acc':>6} {'macroF1':>8} "
        f"{'baseline acc/F1':>16}",
    ]
    for level in ("window", "clip"):
        r = result[level]
        b = r["majority_baseline"]
        interval = r["roc_auc_interval"]
        lines.append(
            f"{level:<7} {r['count']:>6} {r['positives']:>5} {r['roc_auc']:>8.4f} "
            f"{r['accuracy']:>6.3f} {r['macro_f1']:>8.3f} "
            f"{b['accuracy']:>8.3f}/{b['macro_f1']:.3f}   ROC-AUC 95% "
            + (f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "n/a")
        )
        for label, c in r["per_class"].items():
            lines.append(
                f"  {label:<10} P {c['precision']:.3f}  R {c['recall']:.3f}  "
                f"F1 {c['f1']:.3f}  n {c['support']}"
            )
    for side, worst in result["window"]["ranking_loss_by_group"].items():
        lines.append(
            f"window ROC-AUC lost on {side}: "
            + (", ".join(f"{w['group']} {w['share']:.4f}" for w in worst) or "none")
        )
    fa = result["false_alarms"]
    lines.append(
        f"false alarms: {fa['episodes']} episodes in {fa['negative_hours']:.2f} h of "
        f"negative audio = {fa['per_hour']:.2f} per hour (at most "
        f"{fa['per_hour_upper_95']:.1f} per hour at 95% confidence)"
    )
    for column, values in result["subgroups"].items():
        for value, r in values.items():
            lines.append(
                f"  {column}={value}: ROC-AUC {r['roc_auc']:.4f}, recall "
                f"{r['recall']:.3f}, FPR {r['false_positive_rate']:.3f} "
                f"({r['positives']} pos / {r['negatives']} neg)"
            )
    return "\n".join(lines)


def calibrate(bundle: Bundle, data_dir: Path, *, split: str = "val") -> dict[str, Any]:
    """Choose the event threshold on a labelled folder: the best clip-level F1 (a clip counts
    as detected when any window reaches the threshold; ties go to the stricter threshold),
    placed in the middle of the gap down to the next window score, with the whole trade-off
    (recall, precision, F1, false alarms per hour) for the record. Every window, hence every
    clip and every false-alarm episode, is decided as at the score that set the threshold: a
    gap between clip scores alone can hold the second window of a negative clip's episode."""
    manifest = bundle.manifest
    dataset = read_dataset(data_dir)
    _require_bundle_labels(dataset, manifest, data_dir)
    label = next(iter(manifest.thresholds))
    model = BundleModel(bundle)
    positives: list[float] = []
    negative_clips: list[float] = []
    negative_stream: list[float] = []
    every_window: list[np.ndarray] = []
    seconds = 0.0
    for clip in tqdm(dataset.split(split), desc="calibrate", unit="clip"):
        samples = load_mono(clip.path, manifest.features.sample_rate)
        scores = window_scores(model, samples, label)
        every_window.append(scores)
        if clip.label == label:
            positives.append(float(scores.max()))
        else:
            negative_clips.append(float(scores.max()))
            negative_stream += scores.tolist()
            seconds += len(samples) / manifest.features.sample_rate
    if not positives or not negative_clips:
        raise EvaluationError(f"{data_dir}: split {split!r} needs clips of both classes")
    pos, neg = np.array(positives), np.array(negative_clips)

    def row(threshold: float) -> dict[str, float]:
        tp, fp = int((pos >= threshold).sum()), int((neg >= threshold).sum())
        recall, precision = tp / len(pos), tp / max(tp + fp, 1)
        return {
            "threshold": threshold,
            "recall": recall,
            "precision": precision,
            "f1": 2 * precision * recall / (precision + recall) if tp else 0.0,
            "false_alarms_per_hour": count_episodes(negative_stream, threshold) / (seconds / 3600),
        }

    rows = [row(threshold) for threshold in sorted(set(positives))]
    best = max(rows, key=lambda r: (r["f1"], r["threshold"]))
    best = row(metrics.middle_of_gap(best["threshold"], np.concatenate(every_window)))
    return {
        "split": split,
        "label": label,
        "chosen": best,
        "tradeoff": rows,
        "negative_hours": seconds / 3600,
    }
