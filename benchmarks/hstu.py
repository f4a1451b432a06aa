"""HSTU's dense step (models/hstu.py) against the matmul peak and against the reference implementation of the
HSTU paper, generative-recommenders' `HSTUJagged` (meta-recsys/generative-recommenders,
`generative_recommenders/research/modeling/sequential/hstu.py`), at equal shapes, alternated in one process.

Models, forward + backward, each timing paired with a matmul-peak measurement taken right before it (as
benchmarks/dense_step.py, whose inputs, step, peak and memory measurements this uses):
- `HSTU`: our whole dense model at configs/experiments/hstu.yaml's settings (d = 16, one head of 16, 2 layers, 64
  time buckets, the candidate match on) over full rows of L events + the candidate (n = L + 1 positions), on
  dense_step.py's input widths: tokens, layers, head;
- `HSTU @ REV` (`--against REV`): the same as git revision REV has it (before/after a change, same process);
- `generative-recommenders HSTUJagged` (`--peer PATH`): its layer stack (`SequentialTransductionUnitJagged` with
  `RelativeBucketedTimeAndPositionBasedBias`, as its `HSTU` builds them: uvqk with SiLU, rel_bias normalisation,
  128 time buckets) at the same width, heads, layers and n, on a [B, n, d] input that requires grad, its
  timestamps and its [n, n] causal mask; layers only, so it does less than `HSTU` (no tokens, no head, no
  candidate match). PATH is a checkout of that repository, e.g. `git clone
  https://github.com/meta-recsys/generative-recommenders build/generative-recommenders` (not vendored here; its
  hstu.py needs fbgemm_gpu's jagged ops, which the CPU stack installs).

Per row: ms/step (median of --repeats; on CPU with one thread, process CPU time), GFLOP/s and % of the same-run
matmul peak by the analytic FLOPs (3 x forward; attention over every (query, key) pair of the layout, as
`HSTU.flops` and models/flops.py count), the same by the FLOPs the model executes (FlopCounterMode over one
forward, x 3: our HSTU computes only the tiles on and below the diagonal), peak memory of one step, and time and
memory against the peer and against REV.

`--profile N`: also where one step of our HSTU at the first length spends its time (torch.profiler, self CPU
time): the share inside the history attention's forward and backward (`_HistoryAttention` and its backward node,
models/hstu.py) and the N busiest ops; profiler overhead inflates short ops, so read the shares.

    python benchmarks/hstu.py --threads 1 [--lengths 1000] [--batch 32] [--repeats 3] [--peer PATH] \\
        [--against REV] [--profile N] [--out benchmarks/results/hstu_cpu.md] [model.key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/dense_step.py, however this is run
import dense_step as ds  # noqa: E402

from longer_train.components.allocator import keep_freed_memory  # noqa: E402
from longer_train.config import ModelConfig  # noqa: E402
from longer_train.models.hstu import HSTU  # noqa: E402
from longer_train.models.inputs import DenseDims  # noqa: E402

# configs/experiments/hstu.yaml on configs/experiments/longer.yaml
SETTINGS = dict(name="hstu", token_dim=16, head_dim=16, hstu_layers=2, time_buckets=64, head_hidden=[128, 64],
                dropout=0.0)
PEER = "generative-recommenders HSTUJagged"


class PeerHSTU(nn.Module):
    """generative-recommenders' HSTUJagged at our HSTU's shape, over full rows of n positions; its input [B, n, d]
    is a parameter (it stands for the embeddings, which require grad), its timestamps ascending."""

    def __init__(self, peer, cfg: ModelConfig, rows: int, n: int, gen: torch.Generator) -> None:
        super().__init__()
        heads = cfg.token_dim // cfg.head_dim
        layers = [peer.SequentialTransductionUnitJagged(
            embedding_dim=cfg.token_dim, linear_hidden_dim=cfg.head_dim, attention_dim=cfg.head_dim,
            dropout_ratio=0.0, attn_dropout_ratio=0.0, num_heads=heads, linear_activation="silu",
            relative_attention_bias_module=peer.RelativeBucketedTimeAndPositionBasedBias(
                max_seq_len=n, num_buckets=128,
                bucketization_fn=lambda x: (torch.log(torch.abs(x).clamp(min=1)) / 0.301).long()),  # as its HSTU
            normalization="rel_bias", linear_config="uvqk", concat_ua=False,
        ) for _ in range(cfg.hstu_layers)]
        self.hstu = peer.HSTUJagged(modules=layers, autocast_dtype=None)
        self.cfg, self.n, self.heads = cfg, n, heads
        self.x = nn.Parameter(torch.randn(rows, n, cfg.token_dim, generator=gen))
        self.register_buffer("timestamps", torch.randint(0, 10**7, (rows, n), generator=gen).sort(1).values)
        self.register_buffer("invalid_attn_mask", 1.0 - torch.triu(torch.ones(n, n), diagonal=1))  # as its HSTU
        self.register_buffer("x_offsets", torch.arange(rows + 1) * n)

    def forward(self, x) -> torch.Tensor:
        return self.hstu(x=self.x, x_offsets=self.x_offsets, all_timestamps=self.timestamps,
                         invalid_attn_mask=self.invalid_attn_mask)[0]

    def flops(self, lengths: list[int]) -> int:
        """Forward FLOPs of its layers: uvqk, the output projection, QK^T and AV over all n^2 pairs."""
        d, inner = self.cfg.token_dim, self.heads * self.cfg.head_dim
        layer = 2 * self.n * d * 4 * inner + 2 * self.n * inner * d + 4 * self.n * self.n * inner
        return len(lengths) * self.cfg.hstu_layers * layer


def import_peer(path: Path):
    """generative_recommenders' hstu module from a checkout at `path`."""
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm, whose jagged ops its hstu.py calls)

    sys.path.insert(0, str(path.resolve()))
    from generative_recommenders.research.modeling.sequential import hstu

    return hstu


def build(cfg: ModelConfig, length: int, hstu_cls=HSTU, dims_cls=DenseDims, pair_cls=None) -> nn.Module:
    pairs = ds.MATCH_PAIRS if pair_cls is None else tuple(pair_cls(*dataclasses.astuple(p)) for p in ds.MATCH_PAIRS)
    dims = dims_cls(event=ds.EVENT, candidate=ds.CANDIDATE, user=ds.USER, dense=ds.DENSE, max_len=length,
                    match_pairs=pairs)
    torch.manual_seed(0)
    return hstu_cls(cfg, dims).train()


def build_revision(pkg, cfg: ModelConfig, length: int) -> nn.Module:
    """Our HSTU as the imported revision `pkg` (dense_step.import_revision) has it."""
    import importlib

    models = f"{pkg.__name__}.models"
    config = importlib.import_module(f"{pkg.__name__}.config")
    model = build(ds._known_fields(config.ModelConfig, cfg), length, importlib.import_module(f"{models}.hstu").HSTU,
                  importlib.import_module(f"{models}.inputs").DenseDims,
                  importlib.import_module(f"{models}.candidate_match").MatchPair)
    return ds.RevisionModel(pkg, model)


def executed_flops(model: nn.Module, x) -> int:
    """Forward FLOPs the model runs (FlopCounterMode: its matmuls as dispatched)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def run(args: argparse.Namespace, cfg: ModelConfig, on_row=lambda rows: None) -> list[dict]:
    rows = []
    for length in args.lengths:
        gen = torch.Generator().manual_seed(length)
        lengths = torch.full((args.batch,), length)
        x = ds.make_inputs(lengths, "cpu", gen)
        models = {"HSTU": build(cfg, length)}
        if args.against:
            models[f"HSTU @ {args.against_commit}"] = build_revision(args.against_pkg, cfg, length)
        if args.peer:
            models[PEER] = PeerHSTU(args.peer_module, cfg, args.batch, length + 1, gen)
        flops = {name: 3 * m.flops(lengths.tolist()) for name, m in models.items()}
        executed = {name: 3 * executed_flops(m, x) for name, m in models.items()}
        times = {name: [] for name in models}
        pct = {name: [] for name in models}
        for model in models.values():
            for _ in range(args.warmup):
                ds.step(model, x)
        for _ in range(args.repeats):
            for name, model in models.items():  # alternated: load drift hits every model alike
                peak = ds.matmul_peak(args.peak_size, torch.float32, "cpu")
                seconds = ds.timed_step(model, x, "cpu")
                times[name].append(seconds)
                pct[name].append(flops[name] / seconds / peak)
        for name, model in models.items():
            ms = statistics.median(times[name]) * 1e3
            share = statistics.median(pct[name])
            rows.append(dict(L=length, model=name, ms=ms, gflops=flops[name] / ms / 1e6, pct=share,
                             peak=flops[name] / ms / 1e6 / share, executed=executed[name] / ms / 1e6,
                             executed_pct=share * executed[name] / flops[name],
                             memory=ds.peak_memory(model, x, "cpu")))
            print(_row(rows[-1], rows), flush=True)
            on_row(rows)
        del models, x
    return rows


def profile(cfg: ModelConfig, length: int, batch: int, top: int) -> str:
    """Markdown: the shares of one step of our HSTU in the history attention and in its busiest ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = ds.make_inputs(torch.full((batch,), length), "cpu", torch.Generator().manual_seed(length))
    model = build(cfg, length)
    ds.step(model, x)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        ds.step(model, x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    inside = {e.key: e.cpu_time_total for e in events if e.key in ("_HistoryAttention", "_HistoryAttentionBackward")}
    lines = [f"Profile of one step of HSTU at L = {length:,}, batch {batch} (torch.profiler, self CPU time "
             f"{total / 1e3:,.0f} ms under the profiler):", "",
             *(f"- inside `{key}`: {value / total:.0%}" for key, value in inside.items()), "",
             "| op | self CPU ms | share | calls |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        lines.append(f"| {e.key} | {e.self_cpu_time_total / 1e3:,.1f} | {e.self_cpu_time_total / total:.1%} | "
                     f"{e.count} |")
    return "\n".join(lines)


def _ratio(row: dict, other: dict | None, key: str) -> str:
    if other is None or other is row or not other[key] or row[key] is None:
        return ""
    return f"{row[key] / other[key]:.2f}x"


def _row(row: dict, rows: list[dict]) -> str:
    same = {r["model"]: r for r in rows if r["L"] == row["L"]}
    peer = same.get(PEER)
    rev = next((r for name, r in same.items() if " @ " in name), None) if row["model"] == "HSTU" else None
    memory = "n/a" if row["memory"] is None else f"{row['memory'] / 2**20:,.0f}"
    return (f"| {row['L']:,} | {row['model']} | {row['ms']:,.1f} | {row['gflops']:,.1f} | {row['peak']:,.1f} | "
            f"{row['pct']:.1%} | {row['executed']:,.1f} ({row['executed_pct']:.1%}) | {memory} | "
            f"{_ratio(row, peer, 'ms')} | {_ratio(row, peer, 'memory')} | {_ratio(row, rev, 'ms')} | "
            f"{_ratio(row, rev, 'memory')} |")


def markdown(rows: list[dict], args: argparse.Namespace, cfg: ModelConfig, command: str, load: str) -> str:
    changed = {k: v for k, v in dataclasses.asdict(cfg).items() if v != getattr(ModelConfig(), k)}
    return "\n".join([
        f"Command: `{command}`",
        "",
        f"Device: CPU, {os.cpu_count()} cores; torch {torch.__version__}; {torch.get_num_threads()} torch thread(s); "
        f"fp32; peak matmul [{args.peak_size}, {args.peak_size}]^2; batch {args.batch}, full rows; load average "
        f"{load}; median of {args.repeats} alternated step(s) after {args.warmup} warm-up; timed by "
        f"{'process CPU time' if args.clock == 'cpu' else 'wall clock'}; glibc malloc: the trainer's settings",
        "",
        f"Model (ModelConfig fields off their defaults): {changed}",
        "",
        "| L | model | ms/step | GFLOP/s (all pairs) | matmul peak GFLOP/s | % of peak | executed GFLOP/s (% of peak) "
        "| peak memory MiB | time / peer | memory / peer | time / REV | memory / REV |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(r, rows) for r in rows),
    ])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000], help="history length L (n = L + 1)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--peak-size", type=int, default=1024, help="n of the [n, n] x [n, n] peak matmul")
    parser.add_argument("--clock", choices=["wall", "cpu"], help="default: cpu with one thread, else wall")
    parser.add_argument("--peer", type=Path, help="a checkout of meta-recsys/generative-recommenders")
    parser.add_argument("--against", metavar="REV", help="also our HSTU as git revision REV has it")
    parser.add_argument("--profile", type=int, metavar="N", help="also profile one step: the N busiest ops")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("overrides", nargs="*", help="model.key=value")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    args.clock = args.clock or ("cpu" if torch.get_num_threads() == 1 else "wall")
    ds.CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    cfg = ds.model_config(args.overrides, base=SETTINGS)
    if args.peer:
        args.peer_module = import_peer(args.peer)
    if args.against:
        args.against_pkg, args.against_commit = ds.import_revision(args.against, Path(tempfile.mkdtemp()))
    load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"
    command = f"python {shlex.join(['benchmarks/hstu.py', *(sys.argv[1:] if argv is None else argv)])}"

    def write(rows: list[dict], extra: str = "") -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(f"# HSTU dense step against the matmul peak and generative-recommenders' HSTUJagged"
                                f"\n\n{markdown(rows, args, cfg, command, load)}{extra}\n")

    rows = run(args, cfg, write)
    table = markdown(rows, args, cfg, command, load)
    extra = f"\n\n{profile(cfg, args.lengths[0], args.batch, args.profile)}" if args.profile else ""
    write(rows, extra)
    print(table + extra)
    return table + extra


if __name__ == "__main__":
    main()
