"""Ranking metrics: AUC, GAUC, LogLoss, NE and calibration, exact, computed where the predictions are.

- AUC: the Mann-Whitney U statistic (ties count one half) over all rows; GAUC: the per-user AUC weighted by
  the user's impressions, users whose impressions are all one class skipped (their count is reported).
- `RankingMetrics` (evaluation of a split): every rank keeps its own predictions. `compute()` sends each row to
  exactly one rank, twice — by user (GAUC: a user's rows meet on one rank) and by score range (AUC: rank r
  holds the r-th range of scores, equal scores on one rank, and counts the negatives of the lower ranges) —
  then reduces a few sums. No rank ever holds every prediction; the numbers are those of one process.
- `WindowedMetrics` (training): NE, AUC and calibration over the last N steps of all ranks, for the console
  and W&B (`train.metrics_window`).
- Test-set uncertainty (`RankingMetrics(replicates=B)`, the trainer's test split with `train.test_bootstrap`):
  the AUC on B Poisson bootstrap resamples of the users (`bootstrap_auc`). Each user's weight in replicate b is
  a Poisson(1) draw fixed by a hash of (user id, b), so it needs no pass over the whole set, no communication
  (each rank weights its own rows; the AUC routes rows by score range as above), and is the same in every run
  on the same test set: the replicates of two runs are paired, and the spread over b of their difference is
  the test set's share of the uncertainty of that difference (sweep/summary.py). Resampling users, not rows,
  keeps a user's correlated rows together.

NE (normalized entropy, as TorchRec's `NEMetric`): the logloss divided by the entropy of the labels' mean
(the logloss of always predicting the base rate): 1 is no better than the base rate. Calibration: mean
predicted probability / mean label.

Why our own code: torchmetrics' exact AUROC and torchrec.metrics' AUC keep every prediction and gather them
to every rank at `compute()`; their binned AUROC is approximate; torchrec's GAUC does not average ties and
skips sessions with identical predictions, so it gives other numbers than ours. The tests check these
functions against torchmetrics' `binary_auroc` and against the previous single-process implementation.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

_EPS = 1e-7  # probabilities clipped to [eps, 1 - eps] in the logloss


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device() -> torch.device:
    """Where collectives take their tensors: the current GPU under NCCL, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _sum_over_ranks(values: list[float] | Tensor) -> Tensor:
    sums = torch.as_tensor(values, dtype=torch.float64)
    if _world()[1] > 1:
        sums = sums.to(_comm_device())
        dist.all_reduce(sums)
    return sums.cpu()


def _route(owner: Tensor, *columns: Tensor) -> list[Tensor]:
    """Send row i of every column to rank owner[i] (all_to_all): each rank gets the rows it owns."""
    rank, world = _world()
    if world == 1:
        return list(columns)
    device = _comm_device()
    order = torch.argsort(owner, stable=True)
    send = torch.bincount(owner, minlength=world).to(device)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send)
    out = []
    for column in columns:
        received = torch.empty(int(recv.sum()), dtype=column.dtype, device=device)
        dist.all_to_all_single(received, column[order].to(device), recv.tolist(), send.tolist())
        out.append(received.cpu())
    return out


def mann_whitney(groups: Tensor, labels: Tensor, scores: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per group g in [0, num_groups): (positives, rows, U), U = sum over its positives of the negatives of the
    group scored lower, ties counting one half; the group's AUC is U / (positives * negatives). Vectorised:
    one sort by (group, score), average ranks over ties."""
    labels = labels.double()
    if groups.shape[0] == 0:
        zeros = torch.zeros(num_groups, dtype=torch.float64)
        return zeros, zeros.clone(), zeros.clone()
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]
    g, s, y = groups[order], scores[order], labels[order]
    n = g.shape[0]
    index = torch.arange(n, device=g.device)
    starts_group = torch.ones(n, dtype=torch.bool, device=g.device)
    starts_group[1:] = g[1:] != g[:-1]
    starts_tie = starts_group.clone()
    starts_tie[1:] |= s[1:] != s[:-1]
    group_start = torch.cummax(torch.where(starts_group, index, 0), 0).values
    tie = torch.cumsum(starts_tie.long(), 0) - 1
    tie_first = index[starts_tie]
    tie_last = torch.cat([tie_first[1:] - 1, index.new_tensor([n - 1])])
    rank = (tie_first + tie_last).double()[tie] / 2 - group_start + 1  # 1-based, ties averaged, within group
    positives = torch.zeros(num_groups, dtype=torch.float64, device=g.device).index_add_(0, g, y)
    rows = torch.bincount(g, minlength=num_groups).double()
    rank_sum = torch.zeros(num_groups, dtype=torch.float64, device=g.device).index_add_(0, g, y * rank)
    return positives, rows, rank_sum - positives * (positives + 1) / 2


def auc(labels, scores) -> float:
    """AUC of one process's arrays or tensors; NaN when only one class is present."""
    labels, scores = torch.as_tensor(np.asarray(labels) > 0.5), torch.as_tensor(np.asarray(scores, np.float64))
    positives, rows, u = mann_whitney(torch.zeros(len(labels), dtype=torch.long), labels, scores, 1)
    pairs = positives * (rows - positives)
    return float(u / pairs) if pairs > 0 else float("nan")


def _quantiles(values: Tensor, count: int) -> Tensor:
    """`count` evenly spaced order statistics of `values`, smallest and largest included (empty: none)."""
    if not len(values):
        return values
    ordered = torch.sort(values).values
    return ordered[torch.linspace(0, len(values) - 1, count).round().long()]


def _by_score_range(scores: Tensor, *columns: Tensor) -> list[Tensor]:
    """Send each row (its score and `columns`) to the rank that owns its score's range, rank r the r-th range,
    equal scores on one rank; one process keeps its rows. Returns [scores, *columns] as routed."""
    world = _world()[1]
    if world == 1:
        return [scores, *columns]
    # range boundaries: quantiles of a sample of every rank's scores (65 each, gathered to all)
    samples: list = [None] * world
    dist.all_gather_object(samples, _quantiles(scores, 65))
    bounds = _quantiles(torch.cat(samples), world + 1)[1:-1]
    if not len(bounds):  # no row on any rank
        bounds = torch.zeros(world - 1, dtype=torch.float64)
    owner = torch.searchsorted(bounds, scores, right=True)  # equal scores: one owner
    return _route(owner, scores, *columns)


def distributed_auc(labels: Tensor, scores: Tensor) -> float:
    """The AUC of the rows of all ranks (a collective): each row goes to the rank of its score's range."""
    rank, world = _world()
    scores, labels = _by_score_range(scores.double().cpu(), labels.double().cpu())
    positives, rows, u = mann_whitney(torch.zeros(len(labels), dtype=torch.long), labels, scores, 1)
    negatives = rows - positives
    below = torch.zeros(world, dtype=torch.float64)  # negatives on each rank (its range of scores)
    below[rank] = negatives[0]
    below = _sum_over_ranks(below)
    u = u[0] + positives[0] * below[:rank].sum()  # every negative of a lower range scores lower
    total_u, total_pos, total_rows = _sum_over_ranks([float(u), float(positives[0]), float(rows[0])]).tolist()
    pairs = total_pos * (total_rows - total_pos)
    return total_u / pairs if pairs > 0 else float("nan")


BOOTSTRAP_KEY = 0x5EED_B007  # mixed into every replicate's hash: fixed, so every run draws the same resamples
_POISSON_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(16)])  # P(K <= k), K ~ Poisson(1)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 mixing function on uint64 arrays (wrapping arithmetic): a well-spread hash of x."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def bootstrap_weights(users: Tensor, replicates: range) -> np.ndarray:
    """Each row's weight in each replicate [N, len(replicates)]: its user's Poisson(1) count, a function of
    (user id, replicate) only, so the same in every run, on every rank and in every order of the rows."""
    user = _splitmix64(users.numpy().astype(np.int64).view(np.uint64))
    replicate = _splitmix64(np.arange(replicates.start, replicates.stop, dtype=np.uint64) + np.uint64(BOOTSTRAP_KEY))
    uniform = (_splitmix64(user[:, None] ^ replicate[None, :]) >> np.uint64(11)) * 2.0**-53  # [0, 1)
    return np.searchsorted(_POISSON_CDF, uniform, side="right").astype(np.float64)


def _weighted_u(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per weight column: (U, positives, negatives) of the weighted rows, U = sum over positive-negative pairs
    with the positive scored higher of the product of their weights, ties counting one half."""
    if not len(labels):
        zeros = np.zeros(weights.shape[1])
        return zeros, zeros, zeros
    order = np.argsort(scores, kind="stable")
    s, y, w = scores[order], labels[order, None], weights[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # the first row of each run of equal scores
    positive = np.add.reduceat(w * y, starts, axis=0)  # [ties, columns]
    negative = np.add.reduceat(w * (1 - y), starts, axis=0)
    below = np.cumsum(negative, axis=0) - negative  # negatives scored lower than each tie
    return (positive * (below + 0.5 * negative)).sum(0), positive.sum(0), negative.sum(0)


def bootstrap_auc(users: Tensor, labels: Tensor, scores: Tensor, replicates: int) -> np.ndarray:
    """The AUC of the rows of all ranks on each of `replicates` Poisson bootstrap resamples of the users
    (`bootstrap_weights`) [replicates] (a collective); NaN for a resample with one class only."""
    rank, world = _world()
    scores, labels, users = _by_score_range(scores.double().cpu(), labels.double().cpu(), users.long().cpu())
    y, s = labels.numpy(), scores.numpy()
    block = max(1, 2**22 // max(len(y), 1))  # replicates at a time: [rows, block] float64 arrays of <= 32 MiB
    parts = [_weighted_u(y, s, bootstrap_weights(users, range(b, min(b + block, replicates))))
             for b in range(0, replicates, block)]
    u, positives, negatives = (np.concatenate(column) for column in zip(*parts))
    below = np.zeros((world, replicates))  # weighted negatives on each rank (its range of scores)
    below[rank] = negatives
    below = _sum_over_ranks(torch.from_numpy(below)).numpy()
    u = u + positives * below[:rank].sum(0)  # every negative of a lower range scores lower
    u, positives, negatives = _sum_over_ranks(torch.from_numpy(np.stack([u, positives, negatives]))).numpy()
    pairs = positives * negatives
    return np.divide(u, pairs, out=np.full(replicates, np.nan), where=pairs > 0)


def distributed_gauc(users: Tensor, labels: Tensor, scores: Tensor) -> tuple[float, int]:
    """(impression-weighted mean of per-user AUC, number of users with both classes) over all ranks' rows
    (a collective): each row goes to the rank that owns its user."""
    users, labels, scores = users.long().cpu(), labels.double().cpu(), scores.double().cpu()
    world = _world()[1]
    users, labels, scores = _route(torch.remainder(users, world), users, labels, scores)
    ids, groups = torch.unique(users, return_inverse=True)
    positives, rows, u = mann_whitney(groups, labels, scores, len(ids))
    both = (positives > 0) & (positives < rows)
    weighted = (u[both] / (positives[both] * (rows[both] - positives[both])) * rows[both]).sum()
    total, weight, counted = _sum_over_ranks([float(weighted), float(rows[both].sum()), float(both.sum())]).tolist()
    return (total / weight if weight else float("nan")), int(counted)


def _probabilities(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits.double().cpu())


def _loss_sums(labels: Tensor, probs: Tensor) -> list[float]:
    """[rows, label sum, probability sum, logloss sum] of this rank's rows."""
    p = probs.clamp(_EPS, 1 - _EPS)
    y = labels.double()
    logloss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).sum()
    return [float(len(y)), float(y.sum()), float(probs.sum()), float(logloss)]


def _entropy(rate: float) -> float:
    """The logloss of predicting `rate` for labels whose mean is `rate`; NaN unless both classes occur."""
    if not 0 < rate < 1:
        return float("nan")
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


class RankingMetrics:
    """Evaluation metrics of one split: `update` with every batch, `compute` once (a collective). With
    `replicates` > 0 also the AUC of that many bootstrap resamples of the users (`auc_replicates`, a list)."""

    def __init__(self, replicates: int = 0) -> None:
        self.replicates = replicates
        self.users: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.logits: list[Tensor] = []

    def update(self, users: Tensor, labels: Tensor, logits: Tensor) -> None:
        self.users.append(users.detach().long().cpu())
        self.labels.append(labels.detach().double().cpu())
        self.logits.append(logits.detach().double().cpu())

    def compute(self) -> dict[str, float]:
        users = torch.cat(self.users) if self.users else torch.zeros(0, dtype=torch.long)
        labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.float64)
        probs = _probabilities(torch.cat(self.logits)) if self.logits else torch.zeros(0, dtype=torch.float64)
        rows, label_sum, prob_sum, logloss = _sum_over_ranks(_loss_sums(labels, probs)).tolist()
        g, users_counted = distributed_gauc(users, labels, probs)
        mean_label = label_sum / rows if rows else float("nan")
        extra = ({"auc_replicates": [round(float(v), 6) for v in bootstrap_auc(users, labels, probs, self.replicates)]}
                 if self.replicates else {})
        return {
            "auc": distributed_auc(labels, probs),
            "gauc": g,
            "logloss": logloss / rows if rows else float("nan"),
            "calibration": prob_sum / label_sum if label_sum > 0 else float("nan"),
            "ne": logloss / rows / _entropy(mean_label) if rows else float("nan"),
            "samples": rows,
            "gauc_users": float(users_counted),
            **extra,
        }


def ranking_metrics(users, labels, logits, replicates: int = 0) -> dict[str, float]:
    """All evaluation metrics of rows held by this process (arrays or tensors); a collective when distributed,
    each rank passing its own rows."""
    metrics = RankingMetrics(replicates)
    metrics.update(torch.as_tensor(np.asarray(users)), torch.as_tensor(np.asarray(labels, np.float64)),
                   torch.as_tensor(np.asarray(logits, np.float64)))
    return metrics.compute()


class WindowedMetrics:
    """NE, AUC and calibration of the last `steps` training steps of all ranks (`train.metrics_window`)."""

    def __init__(self, steps: int) -> None:
        self.window: deque[tuple[Tensor, Tensor]] = deque(maxlen=steps)

    def update(self, labels: Tensor, logits: Tensor) -> None:
        if self.window.maxlen:
            self.window.append((labels.detach().double().cpu(), logits.detach().double().cpu()))

    def compute(self) -> dict[str, float]:
        """{"ne", "auc", "calibration"} over the window (a collective: every rank calls it at the same step);
        {} when the window is off."""
        if not self.window.maxlen:
            return {}
        labels = torch.cat([labels for labels, _ in self.window])
        probs = _probabilities(torch.cat([logits for _, logits in self.window]))
        rows, label_sum, prob_sum, logloss = _sum_over_ranks(_loss_sums(labels, probs)).tolist()
        return {
            "ne": logloss / rows / _entropy(label_sum / rows) if rows else float("nan"),
            "auc": distributed_auc(labels, probs),
            "calibration": prob_sum / label_sum if label_sum > 0 else float("nan"),
        }
