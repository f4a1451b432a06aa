"""Synthetic long-sequence CTR dataset in the sample schema, with structure that rewards long histories.

Catalog: items grouped in categories of varied size, Zipf popularity across and within categories.
Users: 2-4 long-term interest categories, a history made of sessions (5-30 events) that follow either a
long-term interest or a drifting short-term interest (a random walk with jumps over categories), plus
popularity noise events. Long-term interests recur across the whole history but are sparse in the most
recent events, so the label (which rewards both the long-term and the current short-term interest) is
predicted better from the whole history than from the last 50 events. See docs/data.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .writer import SPLITS, is_replaceable, time_split, write_dataset

ACTIONS = 3  # 0 view, 1 click, 2 purchase/like
SEGMENTS = 8  # user_segment vocabulary
T0 = 1_700_000_000  # start of the window of users' last events (fixed: rows depend only on the seed)
WINDOW_S = 14 * 86400

ITEM_ZIPF = 1.1  # popularity exponent within a category
CATEGORY_ZIPF = 1.0  # popularity exponent across categories
P_LONG_SESSION = 0.25  # a session follows a long-term interest, else the short-term walk
P_NOISE_EVENT = 0.1  # an event is a globally popular item instead of the session's category
P_WALK_JUMP = 0.15  # the short-term interest jumps to a new category, else it stays or drifts by 1-2
MIN_SESSION, MEDIAN_SESSION, MAX_SESSION = 5, 12, 30
IN_SESSION_GAP_S = 60.0  # mean seconds between events of one session
IMPRESSIONS = (10, 20)  # per user, inclusive: enough rows per user for one-epoch training to learn
# action probabilities (view, click, purchase) for long-term, short-term and noise events
ACTION_PROBS = np.array([[0.45, 0.38, 0.17], [0.62, 0.30, 0.08], [0.85, 0.13, 0.02]])
CANDIDATE_MIX = (0.3, 0.3, 0.4)  # long-term interest, current short-term category, popular item
# label logit = BIAS + weights * features + N(0, NOISE)
BIAS, W_LONG, W_SHORT, W_POP, W_ACTIVITY, NOISE = -3.2, 0.9, 1.0, 0.2, 0.15, 0.3
RECENT = 20  # events that count as the short-term interest window
NEWEST_ORACLE = 50  # the label model restricted to this many newest events: DIN (Recent50)'s view
QUALITY_STD, SEGMENT_AFFINITY_STD = 0.3, 0.3


@dataclass
class _Catalog:
    """Items grouped by category; arrays named *_pos are indexed by catalog position, others by id."""

    order: np.ndarray  # catalog position -> item id
    cat_key_pos: np.ndarray  # category + cumulative popularity within the category (monotone)
    pop_cdf_pos: np.ndarray  # cumulative global popularity
    item_cat: np.ndarray  # item id -> category
    log_pop: np.ndarray  # item id -> standardised log popularity
    quality: np.ndarray  # item id -> label bonus
    cat_weight: np.ndarray  # flattened category popularity, for interests and walk jumps

    def in_category(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.cat_key_pos, cats + rng.random(len(cats)), side="right")
        return self.order[np.minimum(pos, len(self.order) - 1)]

    def popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        pos = np.searchsorted(self.pop_cdf_pos, rng.random(n), side="right")
        return self.order[np.minimum(pos, len(self.order) - 1)]

    def categories(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(len(self.cat_weight), size=n, p=self.cat_weight)


def _catalog(rng: np.random.Generator, items: int, categories: int) -> _Catalog:
    sizes = 1 + rng.multinomial(items - categories, _normalise(rng.lognormal(0.0, 1.0, categories)))
    cat_pos = np.repeat(np.arange(categories), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank_in_cat = np.arange(items) - starts[cat_pos]
    within = (rank_in_cat + 1.0) ** -ITEM_ZIPF
    within /= np.bincount(cat_pos, weights=within)[cat_pos]
    cdf_in_cat = np.cumsum(within) - np.repeat(np.cumsum(within)[starts] - within[starts], sizes)
    cdf_in_cat[np.cumsum(sizes) - 1] = 1.0  # exact category boundaries for searchsorted
    cat_pop = _normalise((rng.permutation(categories) + 1.0) ** -CATEGORY_ZIPF)
    pop = cat_pop[cat_pos] * within
    order = rng.permutation(items)
    item_cat = np.empty(items, np.int64)
    item_cat[order] = cat_pos
    log_pop = np.empty(items)
    log_pop[order] = (np.log(pop) - np.log(pop).mean()) / np.log(pop).std()
    return _Catalog(
        order=order,
        cat_key_pos=cat_pos + cdf_in_cat,
        pop_cdf_pos=np.cumsum(pop) / pop.sum(),
        item_cat=item_cat,
        log_pop=log_pop,
        quality=rng.normal(0.0, QUALITY_STD, items),
        cat_weight=_normalise(np.sqrt(cat_pop)),
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum()


@dataclass
class _History:
    """One user's events, oldest first; `walk` is the short-term interest when the event happened."""

    item: np.ndarray
    cat: np.ndarray
    action: np.ndarray
    time: np.ndarray
    walk: np.ndarray


def _user_history(
    rng: np.random.Generator,
    cat: _Catalog,
    n: int,
    interests: np.ndarray,
    sessions_per_day: float,
    t_end: int,
) -> _History:
    n_cat = len(cat.cat_weight)
    size = np.clip(np.rint(rng.lognormal(math.log(MEDIAN_SESSION), 0.5, n // MIN_SESSION + 1)),
                   MIN_SESSION, MAX_SESSION)
    session = np.searchsorted(np.cumsum(size), np.arange(n), side="right")  # event -> session
    n_sessions = int(session[-1]) + 1 if n else 0
    long_term = rng.random(n_sessions) < P_LONG_SESSION
    # short-term interest: a random walk over categories that, at each short-term session, stays,
    # drifts by +-1..2 or jumps; long-term sessions leave it where it is
    jump = (rng.random(n_sessions) < P_WALK_JUMP) & ~long_term
    jump[:1] = True
    drift = np.where(jump | long_term, 0, rng.choice([-2, -1, 0, 0, 0, 1, 2], n_sessions))
    cum = np.cumsum(drift)
    last_jump = np.maximum.accumulate(np.where(jump, np.arange(n_sessions), 0))
    walk = (cat.categories(rng, n_sessions)[last_jump] + cum - cum[last_jump]) % n_cat
    session_cat = np.where(long_term, interests[rng.integers(0, len(interests), n_sessions)], walk)

    noise = rng.random(n) < P_NOISE_EVENT
    item = np.where(noise, cat.popular(rng, n), cat.in_category(rng, session_cat[session]))
    kind = np.where(noise, 2, np.where(long_term[session], 0, 1))
    cum_probs = np.cumsum(ACTION_PROBS, axis=1)[kind]
    action = (rng.random((n, 1)) > cum_probs[:, :-1]).sum(axis=1)

    new_session = np.diff(session, prepend=-1) != 0
    gap = rng.exponential(np.where(new_session, 86400.0 / sessions_per_day, IN_SESSION_GAP_S))
    elapsed = np.cumsum(gap)
    time = t_end - np.floor(elapsed[-1] - elapsed).astype(np.int64) if n else np.zeros(0, np.int64)
    return _History(item=item, cat=cat.item_cat[item], action=action.astype(np.int64), time=time,
                    walk=walk[session])


@dataclass
class _Impressions:
    """Rows before the candidate is drawn; histories are events[start:end] of the concatenated events."""

    user: np.ndarray
    timestamp: np.ndarray
    start: np.ndarray
    end: np.ndarray
    short: np.ndarray  # the user's short-term interest at request time
    events: _History


def _simulate_users(
    rng: np.random.Generator, cat: _Catalog, users: int, max_len: int
) -> tuple[dict, _Impressions]:
    """Per-user profiles (segment, activity, interests) and their impressions with histories."""
    categories = len(cat.cat_weight)
    segment = rng.integers(0, SEGMENTS, users)
    activity_z = rng.normal(0.0, 1.0, users)
    sessions_per_day = 2.0 * np.exp(0.6 * activity_z)
    size_z = 0.5 * activity_z + math.sqrt(0.75) * rng.normal(0.0, 1.0, users)  # active users have more
    n_events = np.minimum(np.floor(0.45 * max_len * np.exp(1.1 * size_z)), 2 * max_len).astype(np.int64)
    n_events[rng.random(users) < 0.01] = 0
    t_end = T0 + rng.integers(0, WINDOW_S, users)
    n_interests = np.minimum(rng.integers(2, 5, users), categories)
    interests = np.full((users, 4), -1, np.int64)

    histories: list[_History] = []
    user, timestamp, start, end, short = [], [], [], [], []
    base = 0
    for u in range(users):
        n = int(n_events[u])
        mine = rng.choice(categories, n_interests[u], replace=False, p=cat.cat_weight)
        interests[u, : n_interests[u]] = mine
        hist = _user_history(rng, cat, n, mine, sessions_per_day[u], int(t_end[u]))
        n_imp = int(rng.integers(IMPRESSIONS[0], IMPRESSIONS[1] + 1))
        if n:  # requests fall among the user's recent events; history = events strictly before
            k = rng.integers(math.ceil(0.7 * n), n + 1, n_imp)
            request = hist.time[k - 1] + rng.integers(1, 900, n_imp)
            seen = np.searchsorted(hist.time, request, side="left")
            short.append(hist.walk[seen - 1])
        else:
            request = int(t_end[u]) + rng.integers(0, 3 * 86400, n_imp)
            seen = np.zeros(n_imp, np.int64)
            short.append(cat.categories(rng, n_imp))
        histories.append(hist)
        user.append(np.full(n_imp, u))
        timestamp.append(request)
        start.append(base + np.maximum(seen - max_len, 0))
        end.append(base + seen)
        base += n
    log_rate = np.log(sessions_per_day)
    profile = {"segment": segment, "activity": (log_rate - log_rate.mean()) / max(log_rate.std(), 1e-9),
               "interests": interests, "n_interests": n_interests, "n_events": n_events}
    events = _History(*(np.concatenate([getattr(h, f.name) for h in histories])
                        for f in fields(_History)))
    rows = _Impressions(user=np.concatenate(user), timestamp=np.concatenate(timestamp).astype(np.int64),
                        start=np.concatenate(start), end=np.concatenate(end), short=np.concatenate(short),
                        events=events)
    return profile, rows


def _candidates_and_labels(
    rng: np.random.Generator, cat: _Catalog, profile: dict, rows: _Impressions
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate item, its category, the 0/1 label of every row, its true click probability, and the same
    label model restricted to the newest NEWEST_ORACLE events of the history (the long-range count taken over
    them only): what the best model of the newest events could score."""
    n, user, short = len(rows.user), rows.user, rows.short
    segment_affinity = rng.normal(0.0, SEGMENT_AFFINITY_STD, (SEGMENTS, len(cat.cat_weight)))
    kind = rng.choice(3, size=n, p=CANDIDATE_MIX)
    interests = profile["interests"][user]
    long_cat = interests[np.arange(n), (rng.random(n) * profile["n_interests"][user]).astype(np.int64)]
    popular = cat.popular(rng, n)
    cand_cat = np.where(kind == 0, long_cat, np.where(kind == 1, short, cat.item_cat[popular]))
    cand_item = np.where(kind == 2, popular, cat.in_category(rng, cand_cat))
    # what the label rewards is observable in the history: how often the user engaged with the candidate's
    # category over the whole history (long-term interest; mostly older than the last 50 events) and
    # whether it was engaged with in the last RECENT events (short-term interest)
    long_count, recent_hit, newest_count = _category_engagement(rows, cand_cat)
    rest = (W_SHORT * recent_hit + W_POP * cat.log_pop[cand_item] + cat.quality[cand_item]
            + segment_affinity[profile["segment"][user], cand_cat] + W_ACTIVITY * profile["activity"][user]
            + rng.normal(0.0, NOISE, n))
    p_click = 1.0 / (1.0 + np.exp(-(BIAS + W_LONG * np.log1p(long_count) + rest)))
    p_newest = 1.0 / (1.0 + np.exp(-(BIAS + W_LONG * np.log1p(newest_count) + rest)))
    label = (rng.random(n) < p_click).astype(np.float32)
    return cand_item, cand_cat, label, p_click, p_newest


def _category_engagement(rows: _Impressions, cand_cat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: events of the candidate's category in its (max_len-cut) history, whether any of the last
    RECENT events has it, and its events among the newest NEWEST_ORACLE."""
    count = np.zeros(len(cand_cat), np.float64)
    recent = np.zeros(len(cand_cat), np.float64)
    newest = np.zeros(len(cand_cat), np.float64)
    for r, (lo, hi, c) in enumerate(zip(rows.start, rows.end, cand_cat)):
        hist = rows.events.cat[lo:hi] == c
        count[r] = np.count_nonzero(hist)
        recent[r] = np.any(hist[-RECENT:])
        newest[r] = np.count_nonzero(hist[-NEWEST_ORACLE:])
    return count, recent, newest


def generate(
    out_dir: str | Path,
    users: int = 4000,
    max_len: int = 512,
    seed: int = 0,
    items: int = 20000,
    categories: int = 50,
) -> dict:
    """Write the sequence store (events/, train/, valid/, test/ Parquet parts), meta.json and a final `.complete`
    marker; return meta. A row's history (the user's events before its request, newest max_len) is rebuilt by
    the loader from the event log, so rows.start / rows.end are not stored.

    Everything is written into a temporary folder next to `out_dir` that is renamed at the end, so
    `out_dir` is either absent, the previous dataset, or complete.
    """
    out_dir = Path(out_dir)
    if users < 1 or max_len < 1 or categories < 1 or items < categories:
        raise ValueError(f"need users >= 1, max_len >= 1 and items >= categories >= 1; got users={users}, "
                         f"max_len={max_len}, items={items}, categories={categories}")
    if out_dir.exists() and not (out_dir.is_dir() and is_replaceable(out_dir)):
        raise FileExistsError(f"{out_dir} exists and is not a dataset written by this generator; "
                              "refusing to replace it")
    rng = np.random.default_rng(seed)
    cat = _catalog(rng, items, categories)
    profile, rows = _simulate_users(rng, cat, users, max_len)
    item, category, label, p_click, p_newest = _candidates_and_labels(rng, cat, profile, rows)
    columns = {
        "user_id": rows.user.astype(np.int64), "item_id": item.astype(np.int64),
        "category_id": category.astype(np.int64), "timestamp": rows.timestamp,
        "user_segment": profile["segment"][rows.user].astype(np.int64),
        "user_activity": profile["activity"][rows.user].astype(np.float32), "label": label,
    }
    ev = rows.events
    events = {"user_id": np.repeat(np.arange(users), profile["n_events"]), "hist_timestamp": ev.time,
              "hist_item_id": ev.item, "hist_category_id": ev.cat, "hist_action": ev.action}
    split_of, valid_from, test_from = time_split(rows.timestamp)
    length = rows.end - rows.start
    p50, p90, p99 = (int(np.percentile(length, q)) for q in (50, 90, 99))
    from ..components.metrics import auc  # imports torch: only when a dataset is written

    meta = {
        "params": {"users": users, "max_len": max_len, "seed": seed, "items": items,
                   "categories": categories},
        "vocab": {"items": items, "categories": categories, "actions": ACTIONS, "users": users,
                  "user_segments": SEGMENTS},
        "rows": {}, "positive_rate": {},
        "history_length": {"p50": p50, "p90": p90, "p99": p99, "max": int(length.max()),
                           "mean": round(float(length.mean()), 1), "empty": int((length == 0).sum())},
        "time_split": {"valid_from": valid_from, "test_from": test_from},
        # what a model can reach: AUC of the label model's own click probabilities, and of the same model
        # knowing only the newest 50 events (a reader sees how much of the long-range gain a model captures)
        "oracle_auc": {name: {"true_probability": round(auc(label[split_of == s], p_click[split_of == s]), 4),
                              "newest_50_oracle": round(auc(label[split_of == s], p_newest[split_of == s]), 4)}
                       for s, name in enumerate(SPLITS)},
    }

    return write_dataset(out_dir, meta, columns, events, split_of, rng)
