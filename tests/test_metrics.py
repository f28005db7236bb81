"""Metrics: a hand-computed case, agreement with sklearn/scipy, the per-task metric sets."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from electra_ds.finetuning import metrics
from electra_ds.finetuning.metrics import compute_metrics


def test_hand_computed_binary_case():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # TP = 2, FP = 1, FN = 1, TN = 1
    assert metrics.accuracy(preds, labels) == pytest.approx(3 / 5)
    assert metrics.f1(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.mcc(preds, labels) == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))


def test_hand_computed_correlations():
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_agrees_with_sklearn_and_scipy():
    rng = random.Random(0)
    labels = [rng.randrange(2) for _ in range(500)]
    preds = [y if rng.random() < 0.7 else 1 - y for y in labels]
    assert metrics.accuracy(preds, labels) == pytest.approx(accuracy_score(labels, preds))
    assert metrics.f1(preds, labels) == pytest.approx(f1_score(labels, preds))
    assert metrics.mcc(preds, labels) == pytest.approx(matthews_corrcoef(labels, preds))
    gold = [rng.uniform(0, 5) for _ in range(300)]
    pred = [g + rng.gauss(0, 1) for g in gold]
    assert metrics.pearson(pred, gold) == pytest.approx(pearsonr(pred, gold)[0])
    assert metrics.spearman(pred, gold) == pytest.approx(spearmanr(pred, gold)[0])
    three = [rng.randrange(3) for _ in range(200)]
    guess = [rng.randrange(3) for _ in range(200)]
    assert metrics.mcc(guess, three) == pytest.approx(matthews_corrcoef(three, guess))


def test_compute_metrics_uses_the_task_metric_set():
    assert set(compute_metrics("cola", [1, 0, 1], [1, 0, 0])) == {"mcc"}
    assert set(compute_metrics("mrpc", [1, 0, 1], [1, 0, 0])) == {"accuracy", "f1"}
    assert set(compute_metrics("stsb", [1.0, 2.0, 3.5], [1.2, 2.5, 3.0])) == {"pearson", "spearman"}
    assert set(compute_metrics("probe-acceptability", [1, 0], [1, 0])) == {"mcc", "accuracy"}
    assert compute_metrics("rte", [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}
    assert all(isinstance(v, float) for v in compute_metrics("qqp", [1, 0], [0, 1]).values())


def test_degenerate_inputs():
    assert metrics.mcc([1, 1, 1], [1, 0, 1]) == 0.0            # constant predictions
    assert metrics.f1([0, 0, 0], [1, 0, 1]) == 0.0             # no positive predictions
    assert metrics.pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0   # undefined: reported as 0
    assert metrics.spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0
    with pytest.raises(ValueError, match="2 predictions but 3 labels"):
        metrics.accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="no predictions"):
        metrics.accuracy([], [])
