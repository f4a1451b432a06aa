"""AUC, GAUC, LogLoss and calibration against direct definitions."""

import itertools

import numpy as np
import pytest

from longer_train.components.metrics import auc, gauc, logloss, ranking_metrics


def _pairwise_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # many ties
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert np.isnan(auc(np.array([1, 1]), np.array([0.3, 0.4])))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    users = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1])  # user 3 has only positives
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.2, 0.7, 0.5, 0.5, 0.5])
    value, counted = gauc(users, labels, scores)
    expected = (4 * _pairwise_auc(labels[:4], scores[:4]) + 2 * 0.0) / 6
    assert counted == 2
    assert value == pytest.approx(expected)


def test_logloss_and_calibration():
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    probs = np.array([0.8, 0.3, 0.6, 0.1])
    assert logloss(labels, probs) == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.6, 0.9])))
    logits = np.log(probs / (1 - probs))
    metrics = ranking_metrics(np.array([1, 1, 2, 2]), labels, logits)
    assert metrics["calibration"] == pytest.approx(probs.mean() / 0.5)
    assert metrics["auc"] == 1.0 and metrics["samples"] == 4
