"""Ranking metrics on numpy arrays: AUC, GAUC, LogLoss, calibration.

GAUC is the per-user AUC weighted by the user's impressions; users whose impressions are all one class
have no AUC and are skipped (their count is reported).
"""

from __future__ import annotations

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); NaN when only one class is present."""
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """(impression-weighted mean of per-user AUC, number of users that had both classes)."""
    order = np.argsort(users, kind="mergesort")
    users, labels, scores = users[order], labels[order], scores[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    total, weight, counted = 0.0, 0, 0
    for lab, sc in zip(np.split(labels, cuts), np.split(scores, cuts)):
        value = auc(lab, sc)
        if not np.isnan(value):
            total += value * len(lab)
            weight += len(lab)
            counted += 1
    return (total / weight if weight else float("nan")), counted


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def ranking_metrics(users: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """All evaluation metrics for one split."""
    probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    g, users_counted = gauc(users, labels, probs)
    mean_label = float(np.mean(labels)) if len(labels) else float("nan")
    return {
        "auc": auc(labels, probs),
        "gauc": g,
        "logloss": logloss(labels, probs),
        "calibration": float(np.mean(probs)) / mean_label if mean_label > 0 else float("nan"),
        "samples": float(len(labels)),
        "gauc_users": float(users_counted),
    }
