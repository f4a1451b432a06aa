"""The candidate–history match task (`longer-data synthetic --task match`): the click probability depends
**only** on how often the candidate's category occurs in the user's history, so a ranking model scores above
chance only by matching the candidate against the history.

Each user has long-term interest categories (they fill the older history) and current ones (they fill the
newest events), drawn uniformly from the catalog: a category, an item, a user id or a user feature carries no
signal on its own (every category is as often a match as not, items are uniform within their category, the
user features are noise). Test and validation users never appear in training (split by user).

- `long` (the long-range variant): the label counts the candidate's category over the whole history, so
  the long-term interests, which are rare among the newest events, matter: the newest-50 count misses most
  of the signal.
- `recent`: the label counts only the newest `RECENT_WINDOW` events; older events are a distractor (the
  user's interests drifted).

`generate` returns meta with `oracle_auc` per split: the AUC of the true click probabilities, of the
newest-50-event oracle (the best any model of the newest 50 events can do), and of a logistic regression on
log(1 + count of the candidate's category) over the whole history and over the newest 50 events, fitted on
the training rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .synthetic import ACTIONS, SEGMENTS, T0, WINDOW_S
from .writer import SPLITS, is_replaceable, write_dataset

VARIANTS = ("long", "recent")
RECENT_WINDOW = 50  # the newest events: the "current interests" part, and DIN (Recent50)'s view
LONG_INTERESTS, CURRENT_INTERESTS = 3, 2
P_INTEREST_OLD = 0.4  # an event older than the newest RECENT_WINDOW is a long-term interest, else noise
P_INTEREST_NEW = 0.6  # one of the newest RECENT_WINDOW events is a current interest, else noise
CANDIDATE_MIX = (1 / 3, 1 / 3, 1 / 3)  # long-term interest, current interest, uniform random category
BIAS, W_COUNT = -1.5, 0.55  # click logit = BIAS + W_COUNT * log(1 + count); BIAS gives ~0.4 positives
SPLIT_USERS = (0.8, 0.1)  # train, valid; the rest test
MIN_HISTORY = 60


def generate(
    out_dir: str | Path,
    users: int = 6000,
    max_len: int = 1000,
    seed: int = 0,
    items: int = 20000,
    categories: int = 500,
    variant: str = "long",
    rows_per_user: int = 10,
) -> dict:
    """Write the match dataset (train/valid/test Parquet, meta.json, `.complete`) and return its meta."""
    out_dir = Path(out_dir)
    if variant not in VARIANTS:
        raise ValueError(f"unknown match variant {variant!r}; expected one of {VARIANTS}")
    if (users < 10 or max_len <= RECENT_WINDOW + MIN_HISTORY or rows_per_user < 1
            or categories < LONG_INTERESTS + CURRENT_INTERESTS + 1 or items < categories):
        raise ValueError(f"need users >= 10, max_len > {RECENT_WINDOW + MIN_HISTORY}, rows_per_user >= 1 and "
                         f"items >= categories > {LONG_INTERESTS + CURRENT_INTERESTS}; got users={users}, "
                         f"max_len={max_len}, rows_per_user={rows_per_user}, items={items}, "
                         f"categories={categories}")
    if out_dir.exists() and not (out_dir.is_dir() and is_replaceable(out_dir)):
        raise FileExistsError(f"{out_dir} exists and is not a dataset written by this generator; "
                              "refusing to replace it")
    rng = np.random.default_rng(seed)
    item_cat = rng.integers(0, categories, items)  # items uniform over categories
    items_of = [np.flatnonzero(item_cat == c) for c in range(categories)]
    sizes = np.array([len(i) for i in items_of])
    if (sizes == 0).any():  # every category needs an item to be drawn from
        item_cat[rng.choice(items, categories, replace=False)] = np.arange(categories)
        items_of = [np.flatnonzero(item_cat == c) for c in range(categories)]

    # per user: interests, history length, events
    lengths = np.clip(np.rint(np.exp(rng.normal(np.log(0.4 * max_len), 0.6, users))), MIN_HISTORY + RECENT_WINDOW,
                      max_len).astype(np.int64)
    interests = np.stack([rng.choice(categories, LONG_INTERESTS + CURRENT_INTERESTS, replace=False)
                          for _ in range(users)])
    long_i, current_i = interests[:, :LONG_INTERESTS], interests[:, LONG_INTERESTS:]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    n = int(ends[-1])
    user_of = np.repeat(np.arange(users), lengths)
    recency = ends[user_of] - 1 - np.arange(n)  # 0 = the user's newest event
    new = recency < RECENT_WINDOW
    own = np.where(new, rng.random(n) < P_INTEREST_NEW, rng.random(n) < P_INTEREST_OLD)
    pick = rng.integers(0, 1 << 30, n)
    interest_cat = np.where(new, current_i[user_of, pick % CURRENT_INTERESTS], long_i[user_of, pick % LONG_INTERESTS])
    event_cat = np.where(own, interest_cat, rng.integers(0, categories, n))
    event_item = _item_in(rng, items_of, event_cat)
    event_action = rng.integers(0, ACTIONS, n)
    gaps = rng.exponential(3600.0, n).astype(np.int64) + 1
    t_end = T0 + rng.integers(0, WINDOW_S, users)
    # times: strictly increasing within a user, the newest event 1..gap seconds before the user's t_end
    cum = np.cumsum(gaps[::-1])[::-1]  # suffix sums
    event_time = t_end[user_of] - (cum - np.concatenate([cum[ends[:-1]], [0]])[user_of])

    # rows: rows_per_user impressions per user at its t_end, all with the user's whole history
    row_user = np.repeat(np.arange(users), rows_per_user)
    m = len(row_user)
    kind = rng.choice(3, size=m, p=CANDIDATE_MIX)
    pick = rng.integers(0, 1 << 30, m)
    cand_cat = np.where(kind == 0, long_i[row_user, pick % LONG_INTERESTS],
                        np.where(kind == 1, current_i[row_user, pick % CURRENT_INTERESTS],
                                 rng.integers(0, categories, m)))
    cand_item = _item_in(rng, items_of, cand_cat)
    full_count, recent_count = _counts(event_cat, starts[row_user], ends[row_user], cand_cat)
    label_count = full_count if variant == "long" else recent_count
    p_click = _sigmoid(BIAS + W_COUNT * np.log1p(label_count))
    label = (rng.random(m) < p_click).astype(np.float32)

    order = rng.permutation(users)  # split by user: test users are unseen in training
    cut = (np.cumsum(SPLIT_USERS) * users).astype(np.int64)
    user_split = np.empty(users, np.int64)
    user_split[order[: cut[0]]], user_split[order[cut[0]: cut[1]]], user_split[order[cut[1]:]] = 0, 1, 2
    split_of = user_split[row_user]

    timestamp = (t_end[row_user] + rng.integers(1, 600, m)).astype(np.int64)
    columns = {
        "user_id": row_user.astype(np.int64), "item_id": cand_item.astype(np.int64),
        "category_id": cand_cat.astype(np.int64), "timestamp": timestamp,
        "user_segment": rng.integers(0, SEGMENTS, users)[row_user].astype(np.int64),
        "user_activity": rng.normal(0.0, 1.0, users)[row_user].astype(np.float32), "label": label,
    }
    # the store's event log (a row's history, the user's events before its request, is rebuilt by the loader:
    # here every event of the user, as requests come after the user's last event)
    events = {"user_id": user_of.astype(np.int64), "hist_timestamp": event_time, "hist_item_id": event_item,
              "hist_category_id": event_cat, "hist_action": event_action}
    # oracles, per split; the count regressions are fitted on the training rows
    features = {"count_full": np.log1p(full_count), "count_recent50": np.log1p(recent_count)}
    fitted = {name: _fit_logistic(x[split_of == 0], label[split_of == 0]) for name, x in features.items()}
    recent_oracle = _sigmoid(BIAS + W_COUNT * np.log1p(recent_count)) if variant == "recent" else \
        _newest_window_oracle(label, recent_count, split_of)
    from ..components.metrics import auc  # imports torch: only when a dataset is written

    oracle = {}
    for s, name in enumerate(SPLITS):
        r = split_of == s
        oracle[name] = {
            "true_probability": round(auc(label[r], p_click[r]), 4),
            "newest_50_oracle": round(auc(label[r], recent_oracle[r]), 4),
            **{f"logistic_{f}": round(auc(label[r], _sigmoid(a + b * features[f][r])), 4)
               for f, (a, b) in fitted.items()},
        }
    row_len = lengths[row_user]
    meta = {
        "task": "match",
        "params": {"users": users, "max_len": max_len, "seed": seed, "items": items, "categories": categories,
                   "variant": variant, "impressions_per_user": rows_per_user},
        "vocab": {"items": items, "categories": categories, "actions": ACTIONS, "users": users,
                  "user_segments": SEGMENTS},
        "rows": {}, "positive_rate": {},
        "history_length": {"p50": int(np.percentile(row_len, 50)), "p90": int(np.percentile(row_len, 90)),
                           "p99": int(np.percentile(row_len, 99)), "max": int(row_len.max()),
                           "mean": round(float(row_len.mean()), 1), "empty": 0},
        "oracle_auc": oracle,
        "logistic_fit": {f: {"intercept": round(a, 4), "slope": round(b, 4)} for f, (a, b) in fitted.items()},
    }
    return write_dataset(out_dir, meta, columns, events, split_of, rng)


def _item_in(rng: np.random.Generator, items_of: list[np.ndarray], cats: np.ndarray) -> np.ndarray:
    """A uniformly random item of each category in `cats`."""
    sizes = np.array([len(i) for i in items_of])
    flat = np.concatenate(items_of)
    offset = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return flat[offset[cats] + (rng.random(len(cats)) * sizes[cats]).astype(np.int64)]


def _counts(event_cat: np.ndarray, lo: np.ndarray, hi: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: occurrences of the candidate's category in events[lo:hi] and in its newest RECENT_WINDOW."""
    full = np.empty(len(cand), np.int64)
    recent = np.empty(len(cand), np.int64)
    for r, (a, b, c) in enumerate(zip(lo, hi, cand)):
        hist = event_cat[a:b] == c
        full[r] = np.count_nonzero(hist)
        recent[r] = np.count_nonzero(hist[-RECENT_WINDOW:])
    return full, recent


def _newest_window_oracle(label: np.ndarray, recent_count: np.ndarray, split_of: np.ndarray) -> np.ndarray:
    """The best score a model of the newest RECENT_WINDOW events can give in the long variant: the click rate
    of the training rows with the same newest-window count, E[click | recent count] (pooled over counts with
    few rows so the estimate is stable)."""
    train = split_of == 0
    top = max(int(recent_count.max()), 1)
    capped = np.minimum(recent_count, top)
    clicks = np.bincount(capped[train], weights=label[train], minlength=top + 1)
    rows = np.bincount(capped[train], minlength=top + 1)
    prior = label[train].mean()
    return (clicks[capped] + 10 * prior) / (rows[capped] + 10)  # shrunk towards the mean click rate


def _fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """Maximum-likelihood (intercept, slope) of P(y=1) = sigmoid(a + b x), by Newton's method."""
    w = np.zeros(2)
    design = np.stack([np.ones_like(x), x], axis=1)
    for _ in range(steps):
        p = _sigmoid(design @ w)
        grad = design.T @ (y - p)
        hess = (design * (p * (1 - p))[:, None]).T @ design + 1e-9 * np.eye(2)
        w += np.linalg.solve(hess, grad)
    return float(w[0]), float(w[1])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
