from __future__ import annotations

import numpy as np
import pytest

from models import metrics


def test_roc_auc_of_perfect_reversed_and_tied_scores() -> None:
    truth = np.array([0, 0, 1, 1], dtype=bool)
    assert metrics.roc_auc(truth, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert metrics.roc_auc(truth, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert metrics.roc_auc(truth, np.full(4, 0.5)) == 0.5
    assert np.isnan(metrics.roc_auc(np.ones(3, dtype=bool), np.arange(3.0)))


def test_roc_auc_matches_scikit_learn() -> None:
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    truth = rng.random(500) < 0.3
    scores = np.round(rng.random(500) + truth * 0.4, 2)  # rounding makes ties
    assert metrics.roc_auc(truth, scores) == pytest.approx(sklearn.roc_auc_score(truth, scores))


def test_auc_loss_shares_say_which_windows_the_ranking_loses_on() -> None:
    truth = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.2, 0.85])  # one loud negative, one quiet positive
    shares = metrics.auc_loss_shares(truth, scores)
    loss = 1 - metrics.roc_auc(truth, scores)
    assert shares[~truth].sum() == pytest.approx(loss)
    assert shares[truth].sum() == pytest.approx(loss)
    # The 0.85 negative outranks two of three positives; the 0.3 positive is outranked once.
    assert shares[5] == pytest.approx(2 / 9)
    assert shares[2] == pytest.approx(1 / 9)
    assert shares[3] == shares[4] == 0


def _recordings(n_groups: int, windows: int, seed: int) -> tuple[np.ndarray, ...]:
    """Windows of recordings whose scores share a per-recording offset, as real ones do."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_groups) % 2 == 0, windows)
    offset = np.repeat(rng.normal(0, 1, n_groups), windows)
    scores = truth * 1.0 + offset + rng.normal(0, 0.2, len(truth))
    groups = np.repeat(np.arange(n_groups), windows)
    return truth, scores, groups


def test_group_bootstrap_interval_is_wider_than_pretending_windows_are_independent() -> None:
    truth, scores, groups = _recordings(n_groups=20, windows=30, seed=5)

    def auc(idx: np.ndarray) -> float:
        return metrics.roc_auc(truth[idx], scores[idx])

    grouped = metrics.group_bootstrap(auc, groups, truth, resamples=300)
    naive = metrics.group_bootstrap(auc, np.arange(len(truth)), truth, resamples=300)
    assert grouped is not None and naive is not None
    (low, high), (naive_low, naive_high) = grouped, naive
    assert low < metrics.roc_auc(truth, scores) < high
    assert high - low > 2 * (naive_high - naive_low)
    assert metrics.group_bootstrap(auc, groups, truth, resamples=300) == (low, high)


def test_group_bootstrap_keeps_both_classes_in_every_resample() -> None:
    truth, scores, groups = _recordings(n_groups=4, windows=5, seed=1)
    seen: list[int] = []

    def positives(idx: np.ndarray) -> float:
        seen.append(int(truth[idx].sum()))
        return metrics.roc_auc(truth[idx], scores[idx])

    metrics.group_bootstrap(positives, groups, truth, resamples=50)
    assert seen == [10] * 50  # two positive recordings of five windows drawn every time


def test_group_bootstrap_gives_no_interval_for_a_single_recording_per_class() -> None:
    truth = _recordings(n_groups=4, windows=5, seed=1)[0]
    one_each = np.where(truth, "cry recorder", "other recorder")
    assert metrics.group_bootstrap(lambda idx: 0.5, one_each, truth) is None
    # Negatives only (a split without cries): no ROC-AUC, so no interval either.
    negatives = np.zeros(20, dtype=bool)
    recordings = np.repeat(np.arange(4), 5)
    assert (
        metrics.group_bootstrap(
            lambda idx: metrics.roc_auc(negatives[idx], np.arange(20.0)[idx]),
            recordings,
            negatives,
        )
        is None
    )


def test_poisson_rate_upper_bounds_what_a_clean_count_proves() -> None:
    # The textbook values: no event allows -ln(0.05) = 3.0 per unit, one event 4.74.
    assert metrics.poisson_rate_upper(0, 1.0) == pytest.approx(2.9957, abs=1e-3)
    assert metrics.poisson_rate_upper(1, 1.0) == pytest.approx(4.7439, abs=1e-3)
    assert metrics.poisson_rate_upper(10, 2.0) == pytest.approx(16.962 / 2, abs=1e-3)
    # No false alarm in six minutes does not show fewer than 0.5 per hour; in ten hours it does.
    assert metrics.poisson_rate_upper(0, 0.1) > 29
    assert metrics.poisson_rate_upper(0, 10.0) < 0.5
    # A bad model over a long stream: about count + 1.645 sqrt(count), no underflow.
    assert metrics.poisson_rate_upper(1000, 1.0) == pytest.approx(1053, abs=2)


def test_classification_report_counts() -> None:
    report = metrics.classification_report(
        np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 0]), ["cry", "other"]
    )
    assert report["confusion"] == [[2, 1], [1, 1]]
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["per_class"]["cry"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["other"]["recall"] == pytest.approx(0.5)
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_best_f1_threshold_separates_separable_scores() -> None:
    truth = np.array([0, 0, 0, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.3, 0.35, 0.7, 0.9])
    # In the middle of the gap, in logits: log(0.35/0.65) and log(0.7/0.3) average to 0.1141.
    assert metrics.best_f1_threshold(truth, scores) == pytest.approx(0.5285, abs=1e-4)


def test_best_f1_threshold_respects_the_allowed_predicate() -> None:
    truth = np.array([0, 0, 0, 1, 1], dtype=bool)
    scores = np.array([0.1, 0.3, 0.8, 0.7, 0.9])
    unconstrained = metrics.best_f1_threshold(truth, scores)
    strict = metrics.best_f1_threshold(truth, scores, allowed=lambda t: t > 0.8)
    assert unconstrained <= 0.7
    assert 0.8 < strict < 0.9  # decides every score as 0.9 would, clear of 0.8 and 0.9
