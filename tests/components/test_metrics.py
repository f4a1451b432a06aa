"""AUC, GAUC, LogLoss, NE and calibration against direct definitions, torchmetrics' AUROC and the previous
single-process numpy implementation (kept below as the oracle), in one process and on 3 gloo ranks; the
bootstrap AUC over users against weighted and resampled definitions."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.functional.classification import binary_auroc

from longer_train.components.metrics import (
    RankingMetrics,
    WindowedMetrics,
    _weighted_u,
    auc,
    bootstrap_auc,
    bootstrap_weights,
    ranking_metrics,
)


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


# ---- the bootstrap over test users -----------------------------------------------------------------------
def test_bootstrap_weights_are_poisson_counts_of_the_user_and_the_replicate_only():
    users = torch.tensor([5, 9, 5, 123456789, 9, 5])
    weights = bootstrap_weights(users, range(0, 50))
    assert weights.shape == (6, 50) and (weights == np.round(weights)).all() and (weights >= 0).all()
    assert (weights[0] == weights[2]).all() and (weights[0] == weights[5]).all()  # one user, one weight
    assert (bootstrap_weights(users[[3, 1]], range(0, 50)) == weights[[3, 1]]).all()  # order and batch free
    assert (bootstrap_weights(users, range(20, 30)) == weights[:, 20:30]).all()  # replicates computed in blocks
    many = bootstrap_weights(torch.arange(20000), range(0, 10))
    assert many.mean() == pytest.approx(1.0, abs=0.01) and many.var() == pytest.approx(1.0, abs=0.02)  # Poisson(1)
    assert (many == 0).mean() == pytest.approx(math.exp(-1), abs=0.01)
    assert abs(np.corrcoef(many[:, 0], many[:, 1])[0, 1]) < 0.03  # replicates independent


def test_weighted_auc_is_the_auc_of_the_rows_repeated_weight_times():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300).astype(np.float64)
    scores = np.round(rng.random(300), 1)  # ties
    weights = rng.integers(0, 4, (300, 3)).astype(np.float64)
    ones = np.ones((300, 1))
    u, pos, neg = _weighted_u(labels, scores, ones)
    assert u[0] / (pos[0] * neg[0]) == pytest.approx(auc(labels, scores), abs=1e-12)
    u, pos, neg = _weighted_u(labels, scores, weights)
    for b in range(3):
        repeated = np.repeat(np.arange(300), weights[:, b].astype(int))
        assert u[b] / (pos[b] * neg[b]) == pytest.approx(auc(labels[repeated], scores[repeated]), abs=1e-12)


def test_bootstrap_spread_is_that_of_resampling_users():
    """The spread of the Poisson bootstrap's AUC agrees with resampling whole users with replacement (the
    classical bootstrap over users), within the noise of 400 replicates each, on 80 users whose rows share a
    user effect the scores do not see; resampling rows instead would understate it."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(80) * 31 + 7, 40)
    score = rng.normal(size=len(users))
    effect = np.repeat(rng.normal(scale=2.0, size=80), 40)
    labels = (rng.random(len(users)) < 1 / (1 + np.exp(-(score + effect)))).astype(np.float64)
    poisson = bootstrap_auc(torch.as_tensor(users), torch.as_tensor(labels), torch.as_tensor(score), 400)
    ids = np.unique(users)
    rows = {u: np.flatnonzero(users == u) for u in ids}
    resample = lambda: np.concatenate([rows[u] for u in rng.choice(ids, len(ids))])
    classical = np.std([auc(labels[i], score[i]) for i in (resample() for _ in range(400))])
    rows_drawn = (rng.integers(0, len(users), len(users)) for _ in range(400))
    row_level = np.std([auc(labels[i], score[i]) for i in rows_drawn])
    assert np.nanstd(poisson) == pytest.approx(classical, rel=0.2)
    assert np.nanmean(poisson) == pytest.approx(auc(labels, score), abs=0.01)
    assert classical > 1.3 * row_level  # the set has the correlation that makes resampling users matter


# ---- 3 gloo ranks, uneven shards (one empty): the same numbers, no rank holding every prediction -----------
_CUTS = (0, 1700, 1700, 3000)  # rank 1 holds no row


def _rank_main(rank, world, store_path, out_path):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        users, labels, logits = _fixed_set()
        part = slice(_CUTS[rank], _CUTS[rank + 1])
        metrics = RankingMetrics(replicates=30)
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
    replicates = ranking_metrics(users, labels, logits, replicates=30)["auc_replicates"]
    for result in results:  # every rank gets the same numbers
        _same(result["eval"], old)
        assert result["eval"]["auc_replicates"] == pytest.approx(replicates, abs=2e-6)  # rounded to 6 digits
        for key, value in window.items():
            assert result["window"][key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_the_window_is_off_at_zero_steps():
    window = WindowedMetrics(steps=0)
    window.update(torch.ones(3), torch.zeros(3))
    assert window.compute() == {}
