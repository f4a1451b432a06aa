"""Warm user state: latency (p50/p99) and candidates/s of a returning user's request through the scorer
(`Scorer.score_requests`: the embedding lookups, prefill or the cache, and score), at several history lengths.

- fresh: no cache, every request encodes its user (prefill);
- warm, same history: the user's state is in the cache (a hit: no prefill);
- warm, +n events: the user comes back with n new events (and a later request time). Every behaviour token
  depends on its recency and its time before the request, so nothing of the cached state can be reused: a miss,
  encoded afresh, plus the cost of the key and of keeping the new state (serve/user_cache.py).

The model is configs/experiments/longer.yaml (random weights) with data.max_len = the history length; one user
per request, --candidates candidates.

    python benchmarks/user_cache.py [--lengths 1000 2000 10000 --new-events 1 5 10 --candidates 100]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from longer_train.config import load_config
from longer_train.models.ranking import build_dense
from longer_train.models.sparse_arch import SparseArch
from longer_train.serve.lookup import EmbeddingLookup
from longer_train.serve.scorer import Scorer
from longer_train.serve.user_cache import CacheLimits, UserStateCache

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VOCAB = {"item": 20_000, "category": 200, "action": 4, "user": 1_000, "segment": 8}


def _scorer(length: int, cache: UserStateCache | None) -> Scorer:
    sizes = [f"data.tables.{name}.num_embeddings={n}" for name, n in VOCAB.items()]
    cfg = load_config([CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / "longer.yaml"],
                      [f"data.max_len={length}", *sizes])
    torch.manual_seed(0)
    sparse = SparseArch(cfg.data, device=torch.device("cpu"))
    return Scorer(cfg, EmbeddingLookup.from_sparse(sparse, cfg.data), build_dense(cfg, sparse), cache)


def _user(length: int, now: int, rng: np.random.Generator) -> pa.Table:
    """One request's user side with a history of `length` events, the newest 60 s before `now`."""
    times = now - 60 - np.sort(rng.integers(0, 10**7, length))[::-1]
    hist = lambda high: pa.array([rng.integers(0, high, length).tolist()], pa.list_(pa.int64()))
    return pa.table({
        "user_id": [7], "timestamp": [now], "hist_timestamp": pa.array([times.tolist()], pa.list_(pa.int64())),
        "hist_item_id": hist(VOCAB["item"]), "hist_category_id": hist(VOCAB["category"]),
        "hist_action": hist(VOCAB["action"]), "user_segment": [3], "user_activity": [0.5],
        "item_id": [0], "category_id": [0],  # collate reads a candidate per row: not scored (score_requests)
    })


def _extended(user: pa.Table, new: int, rng: np.random.Generator) -> pa.Table:
    """The same user `new` events later: those events appended (oldest first order), the request 60 s after them."""
    now = user["timestamp"][0].as_py() + 120
    columns = {"timestamp": [now], "hist_timestamp": [user["hist_timestamp"][0].as_py() + [now - 60] * new]}
    for name, high in (("hist_item_id", VOCAB["item"]), ("hist_category_id", VOCAB["category"]),
                       ("hist_action", VOCAB["action"])):
        columns[name] = [user[name][0].as_py() + rng.integers(0, high, new).tolist()]
    out = user
    for name, value in columns.items():
        out = out.set_column(out.schema.get_field_index(name), name, pa.array(value, out.schema.field(name).type))
    return out


def _time(scorer: Scorer, requests: list[pa.Table], candidates: pa.Table) -> list[float]:
    counts = np.array([candidates.num_rows])
    times = []
    for user in requests:
        start = time.perf_counter()
        scorer.score_requests(user, candidates, counts)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 10_000])
    parser.add_argument("--new-events", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20, help="requests timed per cell")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    candidates = pa.table({"item_id": rng.integers(0, VOCAB["item"], args.candidates),
                           "category_id": rng.integers(0, VOCAB["category"], args.candidates)})
    rows = []
    for length in args.lengths:
        fresh = _scorer(length, None)
        warm = _scorer(length, UserStateCache(CacheLimits(max_mb=1024, max_entries=100_000)))
        base = _user(length, 1_700_000_000, rng)
        count = np.array([args.candidates])
        expected = fresh.score_requests(base, candidates, count)  # also the warm-up of the first calls
        np.testing.assert_allclose(warm.score_requests(base, candidates, count), expected, atol=1e-5)  # kept
        np.testing.assert_allclose(warm.score_requests(base, candidates, count), expected, atol=1e-5)  # a hit
        rows.append((length, "fresh", _time(fresh, [base] * args.repeats, candidates)))
        rows.append((length, "warm, same history", _time(warm, [base] * args.repeats, candidates)))
        for new in args.new_events:
            # each timed request: a user kept in the cache (before timing) comes back with `new` more events
            returning = []
            for i in range(args.repeats):
                user = _user(length - new, 1_700_000_000 + 10**6 * (i + 1), rng)
                warm.score_requests(user, candidates, count)
                returning.append(_extended(user, new, rng))
            rows.append((length, f"warm, +{new} events", _time(warm, returning, candidates)))
    command = "python benchmarks/user_cache.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"# Warm user state vs fresh prefill, CPU ({torch.get_num_threads()} torch threads), fp32, "
          f"{args.candidates} candidates per request, {args.repeats} requests per row")
    print(f"# command: {command}")
    print("| history | request | p50 ms | p99 ms | candidates/s |")
    print("|---:|---|---:|---:|---:|")
    pct = lambda t, q: 1000 * float(np.percentile(t, q))
    for length, label, times in rows:
        print(f"| {length:,} | {label} | {pct(times, 50):.1f} | {pct(times, 99):.1f} | "
              f"{args.candidates / float(np.median(times)):,.0f} |")


if __name__ == "__main__":
    main()
