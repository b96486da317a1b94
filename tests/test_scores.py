"""GLUE's scores: what xformer.trained.scores reports equals independent formulas on random inputs, and
the edge cases GLUE meets (a constant prediction: MCC 0, F1 0 or the majority's, correlations 0)."""

from __future__ import annotations

import numpy as np
import pytest

from xformer.errors import XformerError
from xformer.trained.scores import scores, task_score


def confusion(pred, true):
    tp = np.sum((pred == 1) & (true == 1)); tn = np.sum((pred == 0) & (true == 0))
    fp = np.sum((pred == 1) & (true == 0)); fn = np.sum((pred == 0) & (true == 1))
    return tp, tn, fp, fn


@pytest.mark.parametrize("seed", range(20))
def test_binary_scores_match_their_formulas(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.7, true, 1 - true)
    tp, tn, fp, fn = confusion(pred, true)
    got = scores(["acc", "f1", "mcc"], pred, true)
    assert got["acc"] == pytest.approx((tp + tn) / 200)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert got["mcc"] == pytest.approx(mcc)


@pytest.mark.parametrize("seed", range(20))
def test_correlations_match_their_formulas(seed):
    rng = np.random.default_rng(seed)
    true = rng.uniform(0, 5, 300)
    pred = true + rng.normal(0, 1 + seed / 10, 300)
    got = scores(["pearson", "spearman"], pred, true)
    assert got["pearson"] == pytest.approx(np.corrcoef(pred, true)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x))  # no ties in continuous draws
    assert got["spearman"] == pytest.approx(np.corrcoef(ranks(pred), ranks(true))[0, 1])


def test_multiclass_accuracy_and_glue_task_scores():
    true = np.array([0, 1, 2, 2, 1, 0])
    pred = np.array([0, 2, 2, 2, 1, 1])
    assert scores(["acc"], pred, true)["acc"] == pytest.approx(4 / 6)
    assert task_score({"f1": 0.8, "acc": 0.7}, ["f1", "acc"]) == pytest.approx(0.75)


def test_a_constant_prediction_scores_as_glue_says():
    true = np.array([1] * 68 + [0] * 32)
    majority = scores(["acc", "f1", "mcc"], np.ones(100, dtype=int), true)
    assert majority["mcc"] == 0.0 and majority["acc"] == pytest.approx(0.68)
    assert majority["f1"] == pytest.approx(2 * 68 / (2 * 68 + 32))
    assert scores(["f1"], np.zeros(100, dtype=int), true)["f1"] == 0.0
    flat = scores(["pearson", "spearman"], np.full(10, 2.5), np.arange(10.0))
    assert flat == {"pearson": 0.0, "spearman": 0.0}


def test_an_unknown_score_is_refused():
    with pytest.raises(XformerError, match="unknown score 'auc'"):
        scores(["auc"], [1], [1])
