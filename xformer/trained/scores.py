"""Scores of a classifier or a regressor on a labelled set, computed by scikit-learn and SciPy.

Each score is a function ``(predictions, labels) -> float`` over whole evaluation sets (Matthews
correlation and F1 are not means over batches). A GLUE task is scored as its leaderboard does: the mean of
the scores its catalogue entry names (:func:`task_score`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from xformer.errors import XformerError


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The share of predictions equal to their label."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (CoLA): 0 for a constant prediction, 1 for a perfect one."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson correlation of predicted and true values (STS-B); 0 where the predictions are constant."""
    from scipy.stats import pearsonr

    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    return float(pearsonr(predictions, labels).statistic)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Spearman rank correlation of predicted and true values (STS-B); 0 where either is constant."""
    from scipy.stats import spearmanr

    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    return float(spearmanr(predictions, labels).statistic)


SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "acc": accuracy, "f1": f1, "mcc": matthews, "pearson": pearson, "spearman": spearman,
}


def scores(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """The named scores of ``predictions`` (class ids, or values for regression) against ``labels``."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise XformerError(f"unknown score {unknown[0]!r}; choose from {', '.join(SCORES)}")
    return {name: SCORES[name](predictions, labels) for name in names}


def task_score(values: dict[str, float], names: Sequence[str]) -> float:
    """A task's single score: the mean of its named scores (GLUE: MRPC's F1 and accuracy, STS-B's Pearson
    and Spearman), from ``values`` as :func:`scores` returns them."""
    return float(np.mean([values[n] for n in names]))
