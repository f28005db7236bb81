"""GLUE metrics as pure functions: MCC, accuracy, binary F1, Pearson and Spearman correlation.

``compute_metrics(task, predictions, labels)`` returns ``{metric: float}`` for the metrics the task
lists (see :mod:`electra_ds.finetuning.glue`). Values are fractions (0.55, not 55). A correlation is undefined
when either side is constant; it is reported as 0.0 then (the convention sklearn uses for MCC),
so that metrics files stay valid JSON.
"""

from __future__ import annotations

import math

from electra_ds.finetuning.glue import get_task

METRICS = ("mcc", "accuracy", "f1", "pearson", "spearman")


def _as_lists(predictions, labels):
    preds, golds = list(predictions), list(labels)
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} labels")
    if not preds:
        raise ValueError("no predictions to score")
    return preds, golds


def accuracy(predictions, labels) -> float:
    preds, golds = _as_lists(predictions, labels)
    return sum(int(p) == int(g) for p, g in zip(preds, golds)) / len(preds)


def mcc(predictions, labels) -> float:
    from sklearn.metrics import matthews_corrcoef

    preds, golds = _as_lists(predictions, labels)
    return float(matthews_corrcoef([int(g) for g in golds], [int(p) for p in preds]))


def f1(predictions, labels) -> float:
    """Binary F1 of the positive class 1 (GLUE's convention for MRPC and QQP)."""
    from sklearn.metrics import f1_score

    preds, golds = _as_lists(predictions, labels)
    return float(f1_score([int(g) for g in golds], [int(p) for p in preds], pos_label=1,
                          average="binary", zero_division=0))


def _constant(values) -> bool:
    return max(values) == min(values)


def _correlation(statistic, predictions, labels) -> float:
    """A scipy correlation; 0.0 where it is undefined (fewer than 2 points, a constant side)."""
    preds, golds = _as_lists(predictions, labels)
    preds, golds = [float(p) for p in preds], [float(g) for g in golds]
    if len(preds) < 2 or _constant(preds) or _constant(golds):
        return 0.0
    value = float(statistic(preds, golds)[0])
    return value if math.isfinite(value) else 0.0


def pearson(predictions, labels) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, labels)


def spearman(predictions, labels) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, labels)


_FUNCTIONS = {"mcc": mcc, "accuracy": accuracy, "f1": f1, "pearson": pearson, "spearman": spearman}


def compute_metrics(task, predictions, labels) -> dict:
    """Score predictions (label indices, or floats for regression) with every metric of ``task``."""

    task = get_task(task)
    unknown = [m for m in task.metrics if m not in _FUNCTIONS]
    if unknown:
        raise ValueError(f"task {task.name} lists unknown metrics {unknown}")
    return {name: _FUNCTIONS[name](predictions, labels) for name in task.metrics}
