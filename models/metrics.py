"""Detection metrics in numpy: the same code scores training runs and `evaluate`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


def roc_auc(positive: Array, scores: Array) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half). NaN with one class only."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return 1.0 - float(auc_loss_shares(positive, scores)[~positive].sum())


def auc_loss_shares(positive: Array, scores: Array) -> npt.NDArray[np.float64]:
    """Each negative window's share of 1 - ROC-AUC (the positives scoring under it, ties half,
    over all positive-negative pairs) and likewise each positive's (the negatives over it).
    Either side sums to 1 - ROC-AUC, so grouping a side's shares says which recordings the
    ranking loses on."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    pairs = max(len(pos) * len(neg), 1)

    def outranked(sorted_other: Array, values: Array, above: bool) -> Array:
        below = np.searchsorted(sorted_other, values, "left")
        not_above = np.searchsorted(sorted_other, values, "right")
        ties = not_above - below
        return ((len(sorted_other) - not_above) if above else below) + 0.5 * ties

    shares = np.empty(len(scores), dtype=np.float64)
    shares[~positive] = outranked(pos, scores[~positive], above=False) / pairs
    shares[positive] = outranked(neg, scores[positive], above=True) / pairs
    return shares


def group_bootstrap(
    statistic: Callable[[npt.NDArray[np.intp]], float],
    groups: Array,
    strata: Array,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of `statistic(indices)` when the evaluation is redrawn: whole groups
    (recorders, speakers, recordings) with replacement, as many per stratum (class) as it has;
    a group belongs to the stratum of its first window.
    Windows of one recording are not independent, so resampling windows would give intervals
    far too narrow; NaN resamples (one class missing) are dropped. None when a stratum has a
    single group (redrawing it cannot show how much the result owes to that one recording) or
    every resample is NaN."""
    groups, strata = np.asarray(groups), np.asarray(strata)
    indices: dict[Any, list[int]] = {}  # in order of first appearance, one pass
    for i, g in enumerate(groups.tolist()):
        indices.setdefault(g, []).append(i)
    members = {g: np.array(idx, dtype=np.intp) for g, idx in indices.items()}
    by_stratum: dict[Any, list[Any]] = {}
    for g, idx in members.items():
        by_stratum.setdefault(strata[idx[0]].item(), []).append(g)
    if min(len(names) for names in by_stratum.values()) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = [
            members[names[i]]
            for names in by_stratum.values()
            for i in rng.integers(len(names), size=len(names))
        ]
        values.append(statistic(np.concatenate(drawn)))
    finite = np.array(values)[np.isfinite(values)]
    if not finite.size:  # e.g. one class only: no ROC-AUC to bound
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


def roc_auc_interval(positive: Array, scores: Array, groups: Array) -> tuple[float, float] | None:
    """95% interval of `roc_auc` over redrawn groups (`group_bootstrap`, classes as strata)."""
    positive, scores = np.asarray(positive, dtype=bool), np.asarray(scores)
    return group_bootstrap(lambda idx: roc_auc(positive[idx], scores[idx]), groups, positive)


def roc_auc_difference(
    positive: Array, scores: Array, reference: Array, groups: Array
) -> tuple[float, tuple[float, float] | None]:
    """ROC-AUC of `scores` minus that of `reference` on the same windows, with a paired 95%
    interval: both redrawn with the same groups, which is far tighter than comparing two
    separate intervals."""
    positive = np.asarray(positive, dtype=bool)
    scores, reference = np.asarray(scores), np.asarray(reference)

    def difference(idx: npt.NDArray[np.intp]) -> float:
        return roc_auc(positive[idx], scores[idx]) - roc_auc(positive[idx], reference[idx])

    everything = np.arange(len(positive))
    return difference(everything), group_bootstrap(difference, groups, positive)


def poisson_rate_upper(count: int, exposure: float, level: float = 0.95) -> float:
    """One-sided upper confidence bound on a rate from `count` events in `exposure` (hours):
    the rate under which seeing `count` or fewer would happen only 1 - `level` of the time.
    No false alarm in 6 minutes still allows 30 per hour."""
    if exposure <= 0:
        return float("inf")

    log_factorials = np.array([math.lgamma(k + 1) for k in range(count + 1)])

    def at_most_count(rate: float) -> float:
        # Each term is a probability (<= 1), so summing them in the linear domain cannot
        # overflow; exp(-rate) alone would underflow for a few hundred events.
        k = np.arange(count + 1)
        return float(np.exp(k * np.log(rate) - rate - log_factorials).sum())

    low, high = 0.0, count + 10.0 * (count + 1)  # far above the bound, so the chance is tiny
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if at_most_count(mid) > 1 - level else (low, mid)
    return high / exposure


def roc_curve(positive: Array, scores: Array) -> tuple[Array, Array, Array]:
    """False-positive rates, true-positive rates and thresholds, from the strictest down."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s, p = np.asarray(scores)[order], positive[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.array([], dtype=int)
    idx = np.concatenate((distinct, [len(s) - 1]))
    tps, fps = np.cumsum(p)[idx], np.cumsum(~p)[idx]
    tpr = np.concatenate(([0.0], tps / max(int(p.sum()), 1)))
    fpr = np.concatenate(([0.0], fps / max(int((~p).sum()), 1)))
    return fpr, tpr, np.concatenate(([np.inf], s[idx]))


def precision_recall_curve(positive: Array, scores: Array) -> tuple[Array, Array, Array]:
    positive = np.asarray(positive, dtype=bool)
    _, tpr, thresholds = roc_curve(positive, scores)
    n_pos = int(positive.sum())
    predicted = np.array([(np.asarray(scores) >= t).sum() for t in thresholds[1:]])
    tps = tpr[1:] * n_pos
    precision = np.where(predicted > 0, tps / np.maximum(predicted, 1), 1.0)
    return precision, tpr[1:], thresholds[1:]


def classification_report(truth: Array, predicted: Array, labels: list[str]) -> dict[str, Any]:
    """Accuracy, confusion matrix, per-class precision/recall/F1, macro-F1."""
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (np.asarray(truth), np.asarray(predicted)), 1)
    per_class = {}
    for i, label in enumerate(labels):
        tp = confusion[i, i]
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / confusion[i].sum() if confusion[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(confusion[i].sum()),
        }
    total = confusion.sum()
    return {
        "accuracy": float(np.trace(confusion) / total) if total else float("nan"),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def best_f1_threshold(
    positive: Array, scores: Array, allowed: Callable[[float], bool] | None = None
) -> float:
    """The score threshold that maximises F1 on the given (validation) data, among those
    `allowed` accepts; when it accepts none, the strictest threshold."""
    precision, recall, thresholds = precision_recall_curve(positive, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall + 1e-12), 0)
    for index in np.argsort(-f1, kind="stable"):
        if allowed is None or allowed(float(thresholds[index])):
            return middle_of_gap(float(thresholds[index]), scores)
    return middle_of_gap(float(thresholds[0]), scores)


def middle_of_gap(threshold: float, scores: Array) -> float:
    """`threshold` moved down to the middle, in logits, of the gap between it and the highest
    score under it. A threshold chosen on data sits exactly on one item's score, where the
    slightest difference between runtimes (INT8 ONNX vs TFLite) flips that item; anywhere in
    the gap decides every item the same, and the middle is furthest from both. Logits, since
    that is the softmax's own scale: 0.9990 and 0.9999 are far apart there."""
    scores = np.asarray(scores)
    below = scores[scores < threshold]
    if not below.size:
        return threshold
    middle = (logit(below.max()) + logit(threshold)) / 2
    return float(1 / (1 + np.exp(-middle)))


def logit(p: Array | float) -> Array:
    """log(p / (1 - p)), with p kept off 0 and 1 so a saturated softmax stays finite."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    odds: Array = np.log(p / (1 - p))
    return odds
