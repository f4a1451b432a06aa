"""AUC, GAUC, LogLoss, NE and calibration against direct definitions, torchmetrics' AUROC and the previous
single-process numpy implementation (kept below as the oracle), in one process and on 3 gloo ranks."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.functional.classification import binary_auroc

from longer_train.components.metrics import RankingMetrics, WindowedMetrics, auc, ranking_metrics


# ---- the previous implementation (numpy, every prediction on one process): today's exact numbers ----------
def _average_ranks(x):
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _old_auc(labels, scores):
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _old_gauc(users, labels, scores):
    order = np.argsort(users, kind="mergesort")
    users, labels, scores = users[order], labels[order], scores[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    total, weight, counted = 0.0, 0, 0
    for lab, sc in zip(np.split(labels, cuts), np.split(scores, cuts)):
        value = _old_auc(lab, sc)
        if not np.isnan(value):
            total += value * len(lab)
            weight += len(lab)
            counted += 1
    return (total / weight if weight else float("nan")), counted


def _old_metrics(users, labels, logits):
    probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    g, users_counted = _old_gauc(users, labels, probs)
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return {
        "auc": _old_auc(labels, probs), "gauc": g,
        "logloss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
        "calibration": float(np.mean(probs)) / float(np.mean(labels)), "samples": float(len(labels)),
        "gauc_users": float(users_counted),
    }


def _fixed_set(rows=3000, users=120, seed=0):
    """Labels correlated with the logits, many tied scores, users of 1 to ~60 rows, some one-class users."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows) * 7919 + 13  # sparse ids
    logits = np.round(rng.normal(size=rows), 1).astype(np.float32)  # ties
    labels = (rng.random(rows) < 1 / (1 + np.exp(-2 * logits))).astype(np.float32)
    labels[user == user[0]] = 1.0  # a user with positives only
    return user, labels, logits


def _pairwise_auc(labels, scores):
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_and_torchmetrics_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1)  # many ties
    assert auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)
    assert auc(labels, scores) == pytest.approx(float(binary_auroc(torch.tensor(scores), torch.tensor(labels))))
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert np.isnan(auc(np.array([1, 1]), np.array([0.3, 0.4])))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    users = np.array([1, 1, 1, 1, 2, 2, 3, 3, 3])
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1])  # user 3 has only positives
    probs = np.array([0.9, 0.1, 0.8, 0.2, 0.2, 0.7, 0.5, 0.5, 0.5])
    metrics = ranking_metrics(users, labels, np.log(probs / (1 - probs)))
    assert metrics["gauc_users"] == 2
    assert metrics["gauc"] == pytest.approx((4 * _pairwise_auc(labels[:4], probs[:4]) + 2 * 0.0) / 6)


def test_logloss_ne_and_calibration():
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    probs = np.array([0.8, 0.3, 0.6, 0.1])
    metrics = ranking_metrics(np.array([1, 1, 2, 2]), labels, np.log(probs / (1 - probs)))
    logloss = -np.mean(np.log([0.8, 0.7, 0.6, 0.9]))
    assert metrics["logloss"] == pytest.approx(logloss)
    assert metrics["ne"] == pytest.approx(logloss / math.log(2))  # base rate 0.5: entropy ln 2
    assert metrics["calibration"] == pytest.approx(probs.mean() / 0.5)
    assert metrics["auc"] == 1.0 and metrics["samples"] == 4


def test_one_process_gives_todays_numbers_on_a_fixed_set():
    users, labels, logits = _fixed_set()
    new, old = ranking_metrics(users, labels, logits), _old_metrics(users, labels, logits)
    assert 0.6 < old["auc"] < 0.9 and old["gauc_users"] > 50  # a set where the metrics mean something
    _same(new, old)


def _same(new, old):
    """AUC, GAUC and counts exactly; logloss and calibration to float32 rounding (the old code averaged the
    float32 labels in float32, the new sums them in float64)."""
    for key, value in old.items():
        tolerance = 1e-6 if key in ("logloss", "calibration") else 1e-12
        assert new[key] == pytest.approx(value, rel=tolerance, abs=1e-12), key


# ---- 3 gloo ranks, uneven shards (one empty): the same numbers, no rank holding every prediction -----------
_CUTS = (0, 1700, 1700, 3000)  # rank 1 holds no row


def _rank_main(rank, world, store_path, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        users, labels, logits = _fixed_set()
        part = slice(_CUTS[rank], _CUTS[rank + 1])
        metrics = RankingMetrics()
        for chunk in np.array_split(np.arange(part.start, part.stop), 4):  # several batches
            metrics.update(*(torch.as_tensor(column[chunk]) for column in (users, labels, logits)))
        window = WindowedMetrics(steps=2)
        for step in range(5):  # 5 steps of 200 rows a rank; the window keeps the last 2
            rows = slice(_CUTS[rank] // 10 + 200 * step, _CUTS[rank] // 10 + 200 * (step + 1))
            window.update(torch.as_tensor(labels[rows]), torch.as_tensor(logits[rows]))
        torch.save({"eval": metrics.compute(), "window": window.compute()}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def _windowed_oracle(labels, logits):
    labels, probs = labels.astype(np.float64), 1 / (1 + np.exp(-logits.astype(np.float64)))
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    logloss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    rate = labels.mean()
    return {"ne": logloss / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)), "auc": _old_auc(labels, probs),
            "calibration": probs.mean() / rate}


def test_three_ranks_give_the_one_process_numbers(tmp_path):
    mp.spawn(_rank_main, args=(3, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=3)
    results = [torch.load(tmp_path / f"out.{rank}") for rank in range(3)]
    users, labels, logits = _fixed_set()
    old = _old_metrics(users, labels, logits)
    last_two = np.concatenate([np.arange(c // 10 + 600, c // 10 + 1000) for c in _CUTS[:3]])
    window = _windowed_oracle(labels[last_two], logits[last_two])
    for result in results:  # every rank gets the same numbers
        _same(result["eval"], old)
        for key, value in window.items():
            assert result["window"][key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_the_window_is_off_at_zero_steps():
    window = WindowedMetrics(steps=0)
    window.update(torch.ones(3), torch.zeros(3))
    assert window.compute() == {}
