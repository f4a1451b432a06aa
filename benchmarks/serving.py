"""KV-cached vs naive scoring: candidates/s and per-request latency (p50/p99) of the dense LONGER model.

A request is one user (a history of --length events) with C candidates. `cached` runs `prefill` once and
`score` for the C candidates; `naive` runs the full forward pass once per candidate (the user's rows
repeated C times in one batch). Embedding lookups are outside both (a request looks its history up once).

    python benchmarks/serving.py [--length 2000 --merge-k 8 --queries 100 --candidates 1 10 100 500 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from longer_train.config import ModelConfig
from longer_train.models.inputs import DenseDims, DenseInputs
from longer_train.models.longer import Longer


def _request(dims: DenseDims, length: int, seed: int) -> DenseInputs:
    g = torch.Generator().manual_seed(seed)
    return DenseInputs(
        events=torch.randn(length, dims.event, generator=g), lengths=torch.tensor([length]),
        time_diff=torch.randint(0, 10**7, (length,), generator=g),
        candidate=torch.randn(1, dims.candidate, generator=g),
        user=torch.randn(1, dims.user, generator=g), dense=torch.randn(1, dims.dense, generator=g),
    )


def _naive(model: Longer, x: DenseInputs, candidates: torch.Tensor) -> torch.Tensor:
    c = candidates.shape[0]
    return model(dataclasses.replace(
        x, events=x.events.repeat(c, 1), lengths=x.lengths.repeat(c), time_diff=x.time_diff.repeat(c),
        candidate=candidates, user=x.user.repeat(c, 1), dense=x.dense.repeat(c, 1),
    ))


def _cached(model: Longer, x: DenseInputs, candidates: torch.Tensor) -> torch.Tensor:
    return model.score(model.prefill(x), candidates.unsqueeze(0))[0]


def _rate(candidates: int, times: list[float]) -> float:
    return candidates / float(np.median(times))


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--token-dim", type=int, default=32)
    parser.add_argument("--merge-k", type=int, default=8)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--self-layers", type=int, default=1)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 10, 100, 500, 2000])
    parser.add_argument("--repeats", type=int, default=5, help="requests timed per cell (naive: fewer when slow)")
    parser.add_argument("--naive-budget-s", type=float, default=60.0, help="stop repeating naive after this")
    parser.add_argument("--out", type=Path, help="also write the table here (benchmarks/results/serving_cpu.md)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    cfg = ModelConfig(token_dim=args.token_dim, merge_k=args.merge_k, num_queries=args.queries,
                      num_self_layers=args.self_layers, head_dim=32)
    dims = DenseDims(event=3 * args.token_dim, candidate=2 * args.token_dim, user=args.token_dim, dense=1,
                      max_len=args.length)
    model = Longer(cfg, dims).eval()
    x = _request(dims, args.length, seed=1)

    rows = []
    with torch.no_grad():
        for c in args.candidates:
            candidates = torch.randn(c, dims.candidate, generator=torch.Generator().manual_seed(c))
            few = candidates[:4]  # the two paths must agree before they are timed
            torch.testing.assert_close(_cached(model, x, few), _naive(model, x, few), atol=1e-4, rtol=0)
            cached = _time(partial(_cached, model, x, candidates), args.repeats)
            first = _time(partial(_naive, model, x, candidates), 1)
            more = max(0, min(args.repeats - 1, int(args.naive_budget_s / max(first[0], 1e-9)) - 1))
            naive = first + _time(partial(_naive, model, x, candidates), more)
            rows.append((c, cached, naive))

    command = "python benchmarks/serving.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# KV-cached vs naive scoring, CPU ({torch.get_num_threads()} threads), fp32",
        f"# raw L={args.length}, K={args.merge_k} (L'={-(-args.length // args.merge_k)}), k={args.queries}, "
        f"d={args.token_dim}, width={args.merge_k * args.token_dim}, self layers={args.self_layers}",
        f"# command: {command}",
        "| candidates | cached cand/s | cached p50 ms | cached p99 ms | naive cand/s | naive p50 ms | naive p99 ms "
        "| speed-up | naive requests timed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    pct = lambda t, q: 1000 * float(np.percentile(t, q))
    for c, cached, naive in rows:
        rate = partial(_rate, c)
        lines.append(f"| {c} | {rate(cached):,.0f} | {pct(cached, 50):.1f} | {pct(cached, 99):.1f} | "
                     f"{rate(naive):,.0f} | {pct(naive, 50):.1f} | {pct(naive, 99):.1f} | "
                     f"{rate(cached) / rate(naive):.1f}x | {len(naive)} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(
            "# Serving: KV-cached vs naive scoring (CPU)\n\nMeasured on the 2-core development machine (no GPU), "
            "fp32, dense LONGER model with random weights\n(scores are checked equal between the two paths before "
            f"timing). Produced by:\n\n```\n{command}\n```\n\n{text}")

if __name__ == "__main__":
    main()
