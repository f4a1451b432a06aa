"""Warm user state: latency (p50/p99) and candidates/s of a returning user's request through the scorer
(`Scorer.score_requests`: the embedding lookups, prefill, the cache or append, and score), at several history
lengths, for LONGER with `model.stream_tokens` (tokens that newer events and the request time do not change:
docs/serving.md, "Warm user state"):

- fresh: no cache, every request encodes its whole history (prefill);
- hit: the same history again (at a later request time): the kept state, no encoding;
- +n events: the user comes back with n new events: its kept state is extended by them (append: the new events'
  tokens and keys and values, every layer's queries again), plus the cost of the keys' digests and of keeping the
  new state (serve/user_cache.py).

Each timed round sends one request of every variant in turn (fresh, hit, +n for each n), so the ratios between
them come from the same stretch of machine time. The model is configs/experiments/<--experiment>.yaml with
model.stream_tokens=true (random weights) and data.max_len = the history length; one user per request,
--candidates candidates. Every variant's scores are checked against the fresh scorer's (1e-5).

    python benchmarks/user_cache.py [--lengths 1000 2000 10000 --new-events 1 5 10 --candidates 100
                                     --experiment longer]
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


def _scorer(length: int, cache: UserStateCache | None, experiment: str) -> Scorer:
    sizes = [f"data.tables.{name}.num_embeddings={n}" for name, n in VOCAB.items()]
    cfg = load_config([CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / f"{experiment}.yaml"],
                      [f"data.max_len={length}", "model.stream_tokens=true", *sizes])
    torch.manual_seed(0)
    sparse = SparseArch(cfg.data, device=torch.device("cpu"))
    return Scorer(cfg, EmbeddingLookup.from_sparse(sparse, cfg.data), build_dense(cfg, sparse), cache)


def _user(length: int, now: int, rng: np.random.Generator, user_id: int = 7) -> pa.Table:
    """One request's user side with a history of `length` events, the newest 60 s before `now`."""
    times = now - 60 - np.sort(rng.integers(0, 10**7, length))[::-1]
    hist = lambda high: pa.array([rng.integers(0, high, length).tolist()], pa.list_(pa.int64()))
    return pa.table({
        "user_id": [user_id], "timestamp": [now], "hist_timestamp": pa.array([times.tolist()], pa.list_(pa.int64())),
        "hist_item_id": hist(VOCAB["item"]), "hist_category_id": hist(VOCAB["category"]),
        "hist_action": hist(VOCAB["action"]), "user_segment": [3], "user_activity": [0.5],
        "item_id": [0], "category_id": [0],  # collate reads a candidate per row: not scored (score_requests)
    })


def _later(user: pa.Table, seconds: int) -> pa.Table:
    """The same user and history, `seconds` later."""
    now = pa.array([user["timestamp"][0].as_py() + seconds], user.schema.field("timestamp").type)
    return user.set_column(user.schema.get_field_index("timestamp"), "timestamp", now)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000, 10_000])
    parser.add_argument("--new-events", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20, help="requests timed per cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--experiment", default="longer",
                        help="configs/experiments/<name>.yaml: longer (the quickstart's) or longer_paper (the paper's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    candidates = pa.table({"item_id": rng.integers(0, VOCAB["item"], args.candidates),
                           "category_id": rng.integers(0, VOCAB["category"], args.candidates)})
    rows = []
    for length in args.lengths:
        fresh = _scorer(length, None, args.experiment)
        warm = _scorer(length, UserStateCache(CacheLimits(max_mb=4096, max_entries=100_000)), args.experiment)
        count = np.array([args.candidates])
        labels = ["fresh", "hit", *(f"+{new} events" for new in args.new_events)]
        times: dict[str, list[float]] = {label: [] for label in labels}
        outcomes = warm.cache.counts
        for i in range(args.repeats + 1):  # round 0 warms the first calls up, untimed
            # user i: its history of `length` events for fresh and hit (kept in the cache from an earlier
            # request), and per n a user kept with `length - n` events who comes back with n more
            base = _user(length, 1_700_000_000 + 10**6 * i, rng, user_id=i % 100)
            warm.score_requests(base, candidates, count)
            requests = {"fresh": base, "hit": _later(base, 60)}
            for j, new in enumerate(args.new_events):
                kept = _user(length - new, 1_700_000_000 + 10**6 * i, rng, user_id=(100 * (j + 1) + i) % VOCAB["user"])
                warm.score_requests(kept, candidates, count)
                requests[f"+{new} events"] = _extended(kept, new, rng)
            before = (outcomes.hits, outcomes.appends, outcomes.misses)
            seconds = {}
            for label, user in requests.items():  # alternated: one of each variant in turn
                scorer = fresh if label == "fresh" else warm
                start = time.perf_counter()
                scores = scorer.score_requests(user, candidates, count)
                seconds[label] = time.perf_counter() - start
                np.testing.assert_allclose(scores, fresh.score_requests(user, candidates, count), atol=1e-5)
            after = (outcomes.hits, outcomes.appends, outcomes.misses)
            assert [a - b for a, b in zip(after, before)] == [1, len(args.new_events), 0], (before, after)
            if i:
                for label, value in seconds.items():
                    times[label].append(value)
        rows += [(length, label, times[label]) for label in labels]
    command = "python benchmarks/user_cache.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"# Warm user state vs fresh prefill, configs/experiments/{args.experiment}.yaml with model.stream_tokens, "
          f"CPU ({torch.get_num_threads()} torch threads), fp32, {args.candidates} candidates per request, "
          f"{args.repeats} rounds (variants alternated within each)")
    print(f"# command: {command}")
    print("| history | request | p50 ms | p99 ms | candidates/s | p50 vs fresh |")
    print("|---:|---|---:|---:|---:|---:|")
    pct = lambda t, q: 1000 * float(np.percentile(t, q))
    fresh_p50 = {length: pct(times, 50) for length, label, times in rows if label == "fresh"}
    for length, label, times in rows:
        print(f"| {length:,} | {label} | {pct(times, 50):.1f} | {pct(times, 99):.1f} | "
              f"{args.candidates / float(np.median(times)):,.0f} | {pct(times, 50) / fresh_p50[length]:.2f}x |")


if __name__ == "__main__":
    main()
