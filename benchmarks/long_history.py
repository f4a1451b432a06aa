"""Where LONGER's dense step loses FLOP/s at long histories (issue 31, item 3): at each raw L, the step of
benchmarks/dense_step.py (its model and inputs: the paper's settings, full rows, forward + backward) beside
the parts of it whose work grows with L, each timed alone, everything alternated in one process:

- `tokens`: the token MLP (`TokenBuilder`) over the B x L events;
- `cross K/V + attention`: the cross-causal layer's norm, K/V projection and attention of its k + m queries
  over the L/K + m merged tokens (the model's own block and attention implementation), over the whole batch
  at once and in blocks of --blocks rows: the blocking that keeps a block's K/V (rows x (L/K + m) x 2D
  floats) in cache while its attention reads them;
- `candidate row`: the candidate's row of the cross-causal layer (`CausalBlock.candidate_rows`: its query,
  key and FFN, its attention over every user-side key with the candidate match's bias and readout), with the
  contiguous copies of K and V that the layer makes for it;
- `rest`: the step minus those three parts (time and FLOPs): the queries' projections and FFNs, the
  self-causal layer, the candidate match over the events, the head and the glue between them.

Per part: ms/step (median over --repeats), analytic GFLOP/s (3 x forward FLOPs, as dense_step.py) and share
of the step's FLOPs; then each part's GFLOP/s at the longest L over that at the shortest. On CPU with one
thread, process CPU time (dense_step.py's `--clock cpu`).

    python benchmarks/long_history.py --threads 1 [--lengths 2000 10000] [--blocks 8 2] [--repeats 5] \\
        [--out benchmarks/results/long_history_cpu.md] [model.key=value ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from longer_train.kernels import hybrid_attention

from longer_train.components.allocator import keep_freed_memory
from longer_train.models.inputs import event_rows
from longer_train.models.token_builder import token_flops


def _dense_step():
    """benchmarks/dense_step.py as a module (its model, inputs and step), whatever sys.path holds."""
    spec = importlib.util.spec_from_file_location("dense_step", Path(__file__).with_name("dense_step.py"))
    module = sys.modules["dense_step"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parts(ds, cfg, raw_len: int, batch: int, blocks: list[int]) -> dict[str, tuple]:
    """name -> (forward + backward as a function of nothing, forward FLOPs) at history length raw_len."""
    model = ds.build(cfg, raw_len, "cpu", ds.ParallelConfig())
    x = ds.make_inputs(torch.full((batch,), raw_len), "cpu", torch.Generator().manual_seed(raw_len))
    recency = event_rows(x.lengths, x.events.shape[0])[1]
    block = model.attention.cross
    width, heads = block.q.in_features, block.heads
    keys = -(-raw_len // cfg.merge_k) + model.num_globals - 1  # merged tokens + the user-side globals
    queries = min(cfg.num_queries, keys - model.num_globals + 1) + model.num_globals - 1
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(batch, keys, width, generator=g, requires_grad=True)
    q = torch.randn(batch, heads, queries, width // heads, generator=g, requires_grad=True)
    no_pad = torch.zeros(batch, dtype=torch.long)

    def cross(rows: int) -> None:
        for t, qs, pad in zip(tokens.split(rows), q.split(rows), no_pad.split(rows)):
            k, v = block._keys_values(block.norm1(t), t.shape[:2], None)
            attn = hybrid_attention(qs, k, v, pad, impl=block.attention_impl)
            attn.backward(torch.ones_like(attn))

    cross_flops = batch * (2 * keys * width * 2 * width + 4 * queries * keys * width)
    kv = torch.randn(batch, keys, 2 * width, generator=g, requires_grad=True)  # as the K/V projection leaves them
    candidate = torch.randn(batch, 1, width, generator=g, requires_grad=True)
    pairs = len(model.match_pairs)
    match = torch.randn(batch, 1, keys - model.num_globals + 1, pairs, generator=g) if pairs else None

    def candidate_row() -> None:
        k, v = (t.view(batch, keys, heads, -1).transpose(1, 2).contiguous() for t in kv.chunk(2, dim=-1))
        out, readout = block.candidate_rows(candidate, k, v, no_pad, match)
        (out.sum() + (0 if readout is None else readout.sum())).backward()

    # its projections and FFN (one token a row), attention over the keys and itself, the match bias and readout
    candidate_flops = batch * (2 * width * 4 * width + 4 * cfg.ffn_mult * width * width + 4 * (keys + 1) * width
                               + 2 * 2 * heads * (keys - model.num_globals + 1) * pairs)
    timed = {
        "step": (lambda: ds.step(model, x), model.flops(x.lengths.tolist())),
        "tokens": (lambda: model.tokens(x.events, x.time_diff, recency).sum().backward(),
                   token_flops(batch * raw_len, ds.EVENT, cfg.token_dim, cfg.time_buckets)),
        "cross K/V + attention": (lambda: cross(batch), cross_flops),
        "candidate row": (candidate_row, candidate_flops),
    }
    for rows in blocks:
        timed[f"cross K/V + attention, blocks of {rows} rows"] = (lambda rows=rows: cross(rows), cross_flops)
    return timed


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--blocks", type=int, nargs="*", default=[8, 2], help="row blocks of the cross part")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("overrides", nargs="*", help="model.key=value (on dense_step.py's paper settings)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    malloc = "the trainer's settings" if keep_freed_memory() else "glibc's defaults"
    ds = _dense_step()
    cfg = ds.model_config(args.overrides)
    load = f"{os.getloadavg()[0]:.2f}"
    runs = {length: parts(ds, cfg, length, args.batch, args.blocks) for length in args.lengths}
    times = {(length, name): [] for length, timed in runs.items() for name in timed}
    for timed in runs.values():  # warm-up
        for fn, _ in timed.values():
            fn()
    for _ in range(args.repeats):
        for length, timed in runs.items():
            for name, (fn, _) in timed.items():
                start = clock()
                fn()
                times[(length, name)].append(clock() - start)
    ms = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    rows, rates = [], {}
    for length, timed in runs.items():
        step_flops = 3 * timed["step"][1]
        whole = ["tokens", "cross K/V + attention", "candidate row"]
        rest_ms = ms[(length, "step")] - sum(ms[(length, name)] for name in whole)
        rest_flops = step_flops - sum(3 * timed[name][1] for name in whole)
        figures = [(name, ms[(length, name)], 3 * flops) for name, (_, flops) in timed.items()]
        figures.insert(4, ("rest", rest_ms, rest_flops))
        for name, part_ms, flops in figures:
            rates[(length, name)] = flops / part_ms / 1e6
            share = "" if " blocks " in name else f"{flops / step_flops:.0%}"
            rows.append(f"| {length:,} | {name} | {part_ms:,.1f} | {rates[(length, name)]:,.1f} | {share} |")
    first, last = args.lengths[0], args.lengths[-1]
    names = [name for length, name in rates if length == first]
    command = f"python {shlex.join(['benchmarks/long_history.py', *(sys.argv[1:] if argv is None else argv)])}"
    table = "\n".join([
        "# LONGER's dense step at long histories: its parts alone", "",
        f"Command: `{command}`", "",
        f"Device: CPU, {os.cpu_count()} cores; torch {torch.__version__}; {torch.get_num_threads()} torch thread(s); "
        f"batch {args.batch}, full rows; load average {load}; median of {args.repeats} alternated runs after 1 "
        f"warm-up; timed by {'process CPU time' if clock is time.process_time else 'wall clock'}; glibc malloc: "
        f"{malloc}", "",
        "| raw L | part | ms/step | GFLOP/s | share of the step's FLOPs |", "|---|---|---|---|---|", *rows, "",
        f"| part | GFLOP/s at {last:,} / at {first:,} |", "|---|---|",
        *(f"| {name} | {rates[(last, name)] / rates[(first, name)]:.2f}x |" for name in names),
    ])
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
