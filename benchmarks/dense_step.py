"""Dense-model step benchmark: LONGER against the paper's Transformer baseline and against the stock PyTorch
encoder of the baseline's shape, forward + backward, on the dense network alone (embeddings are plain tensors
that require grad, as TorchRec's lookups hand them over; no torchrec, no optimizer), at a list of history
lengths and length mixes, the models alternated in one process, each timing paired with a matmul-peak
measurement taken right before it.

Per (length mix, L, model): ms/step (median over --repeats; on CPU with one thread, process CPU time by
default: `--clock`), samples/s, analytic GFLOP/s (3 x the model's analytic
forward FLOPs, models/flops.py: backward ~ 2 x forward), % of the matmul peak (dense [n, n] x [n, n] in the
same dtype, measured in the same run: the median of the per-repeat ratios of the achieved rate to the peak
just measured), on a GPU whose datasheet components/device_specs.py knows, MFU: the same rate over the
rated dense bf16 peak (whatever --dtype; the figure the trainer's train/mfu uses), peak memory of one step
(CUDA: max_memory_allocated above the step's start; CPU: growth of
the process's peak resident set, VmHWM after /proc/self/clear_refs), LONGER's time / the Transformer's, and
each model against the stock encoder: time, FLOPs, their quotient (cost per FLOP) and peak memory.

Model: the paper's settings by default (d = 32, K = 8 concat, k = 100, 4 heads of 64, one self-causal
layer, candidate match on), the input widths of the built-in synthetic data (events item|category|action of
16 each; candidate item|category, sharing the item and category tables; user 12; 1 dense feature); any
ModelConfig field can be overridden: `model.merge=inner_trans model.merge_k=4`. The Transformer baseline is
models/flops.py's `transformer_config` (no merge, every event a query); the stock encoder is
`torch.nn.TransformerEncoder` of its shape with is_causal (`StockEncoder`: the reference neither model's code
wrote, full rows only); both run up to --transformer-max-len.

    python benchmarks/dense_step.py --threads 1 [--lengths 1000 2000 5000 10000] [--dists full real] \\
        [--batch 32] [--repeats 3] [--out benchmarks/results/dense_step_cpu.md] [model.key=value ...]
    python benchmarks/dense_step.py --device cuda --dtype bfloat16 --batch 256 --recompute all \
        --impls triton sdpa reference ...  (what `make gpu-check` runs: benchmarks/gpu_check.sh)
    python benchmarks/dense_step.py --threads 1 --against REV      # + LONGER as git revision REV has it
    python benchmarks/dense_step.py --threads 1 --compile --models longer   # + LONGER under parallel.compile
    python benchmarks/dense_step.py --smoke       # tiny sizes (the CPU dry run of `make gpu-check`)

On CPU the process sets glibc malloc as the trainer does (`--malloc trainer`, components/allocator.py: a
step's large buffers stay in the heap instead of being page-faulted back every step); `--malloc default`
leaves glibc's defaults (the two cannot alternate in one process).

Imports neither torchrec nor the config loader (omegaconf, yaml): runs with torch (+ triton) only.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import gc
import importlib.util
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from longer_train.components.allocator import keep_freed_memory, release_free_memory
from longer_train.components.device_specs import peak_flops
from longer_train.config import ModelConfig, ParallelConfig
from longer_train.distributed.parallelize import apply_compute_policies
from longer_train.models.candidate_match import MatchPair
from longer_train.models.flops import mlp_flops, transformer_config
from longer_train.models.inputs import DenseDims, DenseInputs
from longer_train.models.longer import Longer
from longer_train.models.token_builder import time_diff_bucket

# configs/experiments/longer_paper.yaml on configs/experiments/longer.yaml, concat merge (the setting)
PAPER = dict(token_dim=32, time_buckets=64, merge="concat", merge_k=8, merge_proj_dim=None, num_cls=2,
             num_queries=100, query_selection="recent", num_self_layers=1, head_dim=64, ffn_mult=4,
             norm="layernorm", dropout=0.0, head_hidden=[128, 64], candidate_match="attention_readout")
# the built-in synthetic data (configs/datasets/synthetic.yaml): widths of the embedding inputs
EVENT, CANDIDATE, USER, DENSE = 48, 32, 12, 1
MATCH_PAIRS = (MatchPair(0, 0, 16), MatchPair(16, 16, 16))  # candidate item, category <-> event item, category


# what times a step: wall-clock, or on CPU with one thread the process's CPU time (`--clock`), which a shared
# machine's other jobs do not inflate by preempting this one (they still share its caches)
CLOCK = [time.perf_counter]
STOCK = "stock encoder"


def _kernel_bench():
    """benchmarks/kernels.py as a module (its length mixes), without relying on the script folder being on
    sys.path (gpu_check.sh runs with PYTHONSAFEPATH=1)."""
    spec = importlib.util.spec_from_file_location("kernel_bench", Path(__file__).with_name("kernels.py"))
    module = sys.modules["kernel_bench"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def model_config(overrides: list[str], base: dict = PAPER) -> ModelConfig:
    """`base` (PAPER) with `model.key=value` overrides (values read as Python literals, else strings)."""
    settings = dict(base)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    for item in overrides:
        key, sep, raw = item.partition("=")
        field = key.removeprefix("model.")
        if not sep or not key.startswith("model.") or field not in names:
            sys.exit(f"dense_step.py: {item!r} is not a model.<field>=value override (fields: {sorted(names)})")
        try:
            settings[field] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            settings[field] = None if raw == "null" else raw
    return ModelConfig(**settings)


class StockEncoder(nn.Module):
    """The reference the baseline is measured against: `torch.nn.TransformerEncoder` of the Transformer baseline's
    shape (`transformer_config`: width d, d / head_dim heads, the cross layer + the self layers, pre-norm, GELU FFN
    of ffn_mult x d, no dropout), called as its documentation says for causal attention (the square causal mask,
    built once, and `is_causal=True`: its attention then runs SDPA's causal path, which skips the masked blocks).
    Around it, in stock torch.nn modules, the same token MLP as the baseline's (the time-bucket embedding
    concatenated to the events, Linear-GELU-Linear to d, plus a position embedding) and an MLP head over the
    newest position's state and the candidate, user and dense inputs. No CLS, user or candidate tokens and no
    candidate match: what the baseline adds to the encoder is part of what the ratio measures. Full rows only
    (rows of one length: a padding mask would take the encoder off the causal path)."""

    def __init__(self, cfg: ModelConfig, max_len: int, bf16: bool = False) -> None:
        """`bf16`: the whole model under autocast to bf16 (what `--dtype bfloat16` gives the other models)."""
        super().__init__()
        d = self.d = cfg.token_dim
        self.cfg, self.bf16 = cfg, bf16
        self.time = nn.Embedding(cfg.time_buckets, d)
        self.tokens = nn.Sequential(nn.Linear(EVENT + d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.position = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, d // cfg.head_dim, cfg.ffn_mult * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1 + cfg.num_self_layers, enable_nested_tensor=False)
        self.head_dims = [d + CANDIDATE + USER + DENSE, *cfg.head_hidden, 1]
        head = [nn.Linear(a, b) for a, b in zip(self.head_dims[:-1], self.head_dims[1:])]
        self.head = nn.Sequential(*(m for linear in head[:-1] for m in (linear, nn.GELU())), head[-1])
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(max_len), persistent=False)

    def forward(self, x: DenseInputs) -> torch.Tensor:
        with torch.autocast(x.events.device.type, torch.bfloat16, enabled=self.bf16):
            return self._logits(x)

    def _logits(self, x: DenseInputs) -> torch.Tensor:
        b = x.lengths.shape[0]
        time = self.time(time_diff_bucket(x.time_diff, self.cfg.time_buckets))
        tokens = self.tokens(torch.cat([x.events, time], dim=-1)).view(b, -1, self.d)  # [B, L, d]: full rows
        length = tokens.shape[1]
        states = self.encoder(tokens + self.position.weight[:length], mask=self.causal[:length, :length],
                              is_causal=True)
        return self.head(torch.cat([states[:, -1], x.candidate, x.user, x.dense], dim=-1)).squeeze(-1)

    def flops(self, lengths: list[int], causal_pairs: bool = False) -> int:
        """Forward matmul FLOPs, attention over every (query, key) pair as models/flops.py and FlopCounterMode
        count it, or (`causal_pairs`) over the pairs the causal mask allows: the work SDPA's causal path does."""
        d, b, length = self.d, len(lengths), max(lengths)
        pairs = length * (length + 1) // 2 if causal_pairs else length * length
        layer = 2 * length * d * 4 * d + 4 * length * self.cfg.ffn_mult * d * d + 4 * pairs * d  # qkv+out, FFN, attn
        tokens = sum(lengths) * (2 * (EVENT + d) * 2 * d + 2 * 2 * d * d)
        return tokens + b * (len(self.encoder.layers) * layer + mlp_flops(self.head_dims))


def make_inputs(lengths: torch.Tensor, device: str, gen: torch.Generator) -> DenseInputs:
    n, b = int(lengths.sum()), lengths.shape[0]
    leaf = lambda *shape: torch.randn(*shape, generator=gen).to(device).requires_grad_()  # noqa: E731
    return DenseInputs(
        events=leaf(n, EVENT), lengths=lengths.to(device),
        time_diff=torch.randint(0, 10**7, (n,), generator=gen).to(device),
        candidate=leaf(b, CANDIDATE), user=leaf(b, USER), dense=leaf(b, DENSE),
        # counted on the host, as the loader does: no device sync for the padded length or the valid positions
        pad_to=int(lengths.max()) if b else 0, host_lengths=lengths.cpu(),
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(n: int, dtype: torch.dtype, device: str, tries: int = 3) -> float:
    """Best FLOP/s of [n, n] x [n, n] over `tries` (after one warm-up)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(tries):
        sync(device)
        start = CLOCK[0]()
        for _ in range(10 if device == "cuda" else 1):
            a @ b
        sync(device)
        best = min(best, (CLOCK[0]() - start) / (10 if device == "cuda" else 1))
    return 2 * n**3 / best


def step(model: Longer, x: DenseInputs) -> None:
    """Forward + backward (bf16, when asked, by the model's own compute policy: parallel.bf16)."""
    model.zero_grad(set_to_none=True)
    for t in (x.events, x.candidate, x.user, x.dense):
        t.grad = None
    model(x).float().sum().backward()


def timed_step(model: Longer, x: DenseInputs, device: str) -> float:
    sync(device)
    start = CLOCK[0]()
    step(model, x)
    sync(device)
    return CLOCK[0]() - start


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def peak_memory(model: Longer, x: DenseInputs, device: str) -> float | None:
    """Bytes one step holds above what was allocated before it (None where it cannot be read)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(model, x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    try:
        release_free_memory()  # freed memory back to the OS, so RSS is what is live
        before = _status_kib("VmRSS:")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        step(model, x)
        return (_status_kib("VmHWM:") - before) * 1024
    except (OSError, RuntimeError, AttributeError):
        return None


def build(cfg: ModelConfig, max_len: int, device: str, parallel: ParallelConfig) -> Longer:
    dims = DenseDims(event=EVENT, candidate=CANDIDATE, user=USER, dense=DENSE, max_len=max_len,
                      match_pairs=MATCH_PAIRS)
    torch.manual_seed(0)
    model = Longer(cfg, dims).to(device).train()
    apply_compute_policies(model, parallel, device)
    return model


def import_revision(rev: str, dest: Path):
    """The package (longer_train with its kernels) of git revision `rev`, importable beside this tree's as
    `longer_train_<commit>` (the package imports itself relatively only), and the short commit id."""
    repo = Path(__file__).resolve().parents[1]
    git = lambda *a, **kw: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, **kw)  # noqa: E731
    commit = git("rev-parse", "--short", rev, text=True).stdout.strip()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=git("archive", commit, "longer_train", "kernels").stdout,
                   check=True)
    name = f"longer_train_{commit}"
    (dest / "longer_train").rename(dest / name)
    (dest / "kernels").rename(dest / name / "kernels")
    sys.path.insert(0, str(dest))
    return importlib.import_module(name), commit


def build_revision(pkg, cfg: ModelConfig, max_len: int, device: str, parallel: ParallelConfig):
    """`build` with the classes of an imported revision (`import_revision`)."""
    models = importlib.import_module(f"{pkg.__name__}.models")
    config = importlib.import_module(f"{pkg.__name__}.config")
    longer = importlib.import_module(f"{models.__name__}.longer")
    try:  # the input dataclasses moved to models/inputs.py and were renamed (issue 18)
        dims_cls = importlib.import_module(f"{models.__name__}.inputs").DenseDims
    except (ImportError, AttributeError):
        dims_cls = longer.LongerDims
    pair = importlib.import_module(f"{models.__name__}.candidate_match").MatchPair
    dims = dims_cls(event=EVENT, candidate=CANDIDATE, user=USER, dense=DENSE, max_len=max_len,
                    match_pairs=tuple(pair(*dataclasses.astuple(p)) for p in MATCH_PAIRS))
    torch.manual_seed(0)
    # fields added since REV (parallel.compile, model.length_chunks: issue 17) are features REV does not have
    model = longer.Longer(_known_fields(config.ModelConfig, cfg), dims).to(device).train()
    policies = importlib.import_module(f"{pkg.__name__}.distributed.parallelize")
    policies.apply_compute_policies(model, _known_fields(config.ParallelConfig, parallel), device)
    return RevisionModel(pkg, model)


class RevisionModel(nn.Module):
    """A model of an imported revision, called with this tree's `DenseInputs` (converted to the revision's class:
    the same tensors, so gradients reach them); its other attributes (flops, ...) are the model's."""

    def __init__(self, pkg, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs_cls = importlib.import_module(f"{pkg.__name__}.models.inputs").DenseInputs

    def forward(self, x: DenseInputs) -> torch.Tensor:
        values = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
        known = {f.name for f in dataclasses.fields(self.inputs_cls)}
        if "pad_to" not in known:  # before one sizing contract (issue 33): the loader's count was `longest`
            values["longest"] = values.pop("pad_to")
        return self.model(self.inputs_cls(**{k: v for k, v in values.items() if k in known}))

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)


def _known_fields(cls, value):
    """`value` as the dataclass `cls` of another revision: the fields `cls` has."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dataclasses.asdict(value).items() if k in known})


def run(args: argparse.Namespace, cfg: ModelConfig, on_row=lambda rows: None) -> list[dict]:
    """The table's rows; `on_row(rows)` after each (the table so far survives a timeout)."""
    dtype = getattr(torch, args.dtype)
    parallel = ParallelConfig(bf16=list(args.bf16), recompute=args.recompute)
    compiled = dataclasses.replace(parallel, compile=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 runs and the fp32 peak: true fp32
    kb = _kernel_bench()
    rated = peak_flops(torch.device(args.device))  # FLOP/s, None off a known GPU
    rows = []
    for dist in args.dists:
        for raw_len in args.lengths:
            gen = torch.Generator().manual_seed(raw_len)
            lengths = kb.sample_lengths(dist, raw_len, args.batch, gen)
            x = make_inputs(lengths, args.device, gen)
            models = {}
            if "longer" in args.models:
                for impl in args.impls or [cfg.attention_impl]:
                    name = f"LONGER ({impl})" if args.impls else "LONGER"
                    models[name] = build(dataclasses.replace(cfg, attention_impl=impl), raw_len, args.device, parallel)
                    if args.compile:  # compiled in the first warm-up step
                        models[f"{name} (compiled)"] = build(dataclasses.replace(cfg, attention_impl=impl), raw_len,
                                                             args.device, compiled)
                if args.against:
                    models[f"LONGER @ {args.against_commit}"] = build_revision(args.against_pkg, cfg, raw_len,
                                                                               args.device, parallel)
            if "transformer" in args.models and raw_len <= args.transformer_max_len:
                models["Transformer"] = build(transformer_config(cfg, raw_len), raw_len, args.device, parallel)
            if "stock" in args.models and raw_len <= args.transformer_max_len and dist == "full":
                torch.manual_seed(0)
                models[STOCK] = StockEncoder(transformer_config(cfg, raw_len), raw_len,
                                             bf16=bool(parallel.bf16)).to(args.device).train()
            times = {name: [] for name in models}
            pct = {name: [] for name in models}
            flops = {name: 3 * m.flops(lengths.tolist()) for name, m in models.items()}
            causal_flops = 3 * models[STOCK].flops(lengths.tolist(), causal_pairs=True) if STOCK in models else None
            for name, model in models.items():  # warm-up (allocator, autotuning, Triton compilation, compile)
                start = time.perf_counter()
                for _ in range(args.warmup):
                    step(model, x)
                if name.endswith(" (compiled)"):
                    print(f"{name}: warm-up (with the compile) {time.perf_counter() - start:.1f} s wall", flush=True)
            for _ in range(args.repeats):
                for name, model in models.items():
                    peak = matmul_peak(args.peak_size, dtype, args.device)
                    seconds = timed_step(model, x, args.device)
                    times[name].append(seconds)
                    pct[name].append(flops[name] / seconds / peak)
            for name, model in models.items():
                ms = statistics.median(times[name]) * 1e3
                rows.append(dict(
                    dist=dist, L=raw_len, mean_len=float(lengths.float().mean()), model=name, ms=ms,
                    samples=len(lengths) / ms * 1e3, mfu=flops[name] / ms / 1e-3 / rated if rated else None,
                    flops=flops[name], causal_flops=causal_flops if name == STOCK else None,
                    gflops=flops[name] / ms / 1e6, pct=statistics.median(pct[name]),
                    peak=flops[name] / ms / 1e6 / statistics.median(pct[name]),
                    memory=peak_memory(model, x, args.device),
                ))
                print(_row(rows[-1], rows), flush=True)
                on_row(rows)
            del models, x
    return rows


def _same(row: dict, rows: list[dict], model: str) -> dict | None:
    """The row of `model` at row's length mix and L, if it ran."""
    return next((r for r in rows if r["dist"] == row["dist"] and r["L"] == row["L"] and r["model"] == model), None)


def _ratios(row: dict, rows: list[dict]) -> list[str]:
    """The ratio columns of a row: its time / the Transformer's (LONGER rows; with --against / --compile also
    / LONGER at REV / eager), then against the stock encoder: time, FLOPs (all pairs, and in brackets the
    stock's causal pairs only), time ratio / FLOPs ratio (the row's cost per FLOP against the stock's: 1 is the
    same efficiency), peak memory."""
    name = row["model"]
    transformer, stock = _same(row, rows, "Transformer"), _same(row, rows, STOCK)
    vs_transformer = f"{row['ms'] / transformer['ms']:.3f}x" if name.startswith("LONGER") and transformer else ""
    if name == "LONGER":  # this tree against the revision, in the same run
        rev = next((r for r in rows if r["dist"] == row["dist"] and r["L"] == row["L"] and " @ " in r["model"]), None)
        if rev:
            vs_transformer += f" (time / {rev['model']}: {row['ms'] / rev['ms']:.3f}x)"
    eager = _same(row, rows, name.removesuffix(" (compiled)"))
    if name.endswith(" (compiled)") and eager:  # compiled against eager, in the same run
        vs_transformer += f" (time / {eager['model']}: {row['ms'] / eager['ms']:.3f}x)"
    if stock is None or name == STOCK:
        return [vs_transformer, "", "", "", ""]
    time, flops = row["ms"] / stock["ms"], row["flops"] / stock["flops"]
    causal = row["flops"] / stock["causal_flops"]
    memory = "" if row["memory"] is None or not stock["memory"] else f"{row['memory'] / stock['memory']:.2f}x"
    return [vs_transformer, f"{time:.3f}x", f"{flops:.3f}x ({causal:.3f}x)",
            f"{time / flops:.2f} ({time / causal:.2f})", memory]


def _row(row: dict, rows: list[dict]) -> str:
    memory = "n/a" if row["memory"] is None else f"{row['memory'] / 2**20:,.0f}"
    mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.1%}"
    return (f"| {row['dist']} | {row['L']:,} | {row['mean_len']:,.0f} | {row['model']} | {row['ms']:,.1f} | "
            f"{row['samples']:,.0f} | {row['gflops']:,.1f} | {row['peak']:,.1f} | {row['pct']:.1%} | {mfu} | "
            f"{memory} | "
            + " | ".join(_ratios(row, rows)) + " |")


MALLOC = {"trainer": "the trainer's settings (components/allocator.py)", "default": "glibc's defaults"}


def markdown(rows: list[dict], args: argparse.Namespace, cfg: ModelConfig, command: str, load: str) -> str:
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    rated = peak_flops(torch.device(args.device))
    device += f" (rated dense bf16 peak {rated / 1e12:,.0f} TFLOP/s)" if rated else ""
    changed = {k: v for k, v in dataclasses.asdict(cfg).items() if v != getattr(ModelConfig(), k)}
    lines = [
        f"Command: `{command}`",
        "",
        f"Device: {device}; torch {torch.__version__}; {torch.get_num_threads()} torch thread(s); peak matmul in "
        f"{args.dtype} ([{args.peak_size}, {args.peak_size}]^2); bf16 components {args.bf16 or 'none'}, recompute "
        f"{args.recompute}; batch {args.batch}; load average {load}; median of {args.repeats} alternated "
        f"step(s) after {args.warmup} warm-up; timed by {'process CPU time' if args.clock == 'cpu' else 'wall clock'}"
        + (f"; glibc malloc: {MALLOC.get(args.malloc, args.malloc)}" if args.device == "cpu" else ""),
        "",
        f"Model (ModelConfig fields off their defaults): {changed}",
        "",
        "| lengths | raw L | mean L | model | ms/step | samples/s | GFLOP/s | measured matmul peak GFLOP/s | % of "
        "measured peak | MFU (rated bf16 peak) | peak memory MiB | time / Transformer | time / stock | FLOPs / stock "
        "(causal pairs) | time ratio / FLOPs ratio, stock (causal pairs) | memory / stock |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(r, rows) for r in rows),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", help="raw L (default 1000 2000 3000 5000 7500 10000)")
    parser.add_argument("--dists", nargs="+", default=["full"], choices=["full", "real"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=["longer", "transformer", "stock"],
                        choices=["longer", "transformer", "stock"],
                        help="stock: torch.nn.TransformerEncoder of the Transformer's shape (StockEncoder; full rows)")
    parser.add_argument("--transformer-max-len", type=int, default=10000,
                        help="longest L the Transformer and the stock encoder run at (attention quadratic in L)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="bfloat16: every component in bf16 (unless --bf16 names some) and a bf16 peak")
    parser.add_argument("--bf16", nargs="*", help="components in bf16 (parallel.bf16: tokens attention ffn head)")
    parser.add_argument("--impls", nargs="+", choices=["reference", "triton", "sdpa"],
                        help="LONGER once per attention implementation (model.attention_impl), alternated")
    parser.add_argument("--recompute", default="none", help="parallel.recompute")
    parser.add_argument("--compile", action="store_true",
                        help="also each LONGER under parallel.compile (torch.compile), alternated with it eager")
    parser.add_argument("--peak-size", type=int, default=1024, help="n of the [n, n] x [n, n] peak matmul")
    parser.add_argument("--clock", choices=["wall", "cpu"],
                        help="step and peak timer: wall-clock, or process CPU time (default: cpu on CPU with one "
                             "thread, where a shared machine's load would otherwise skew the times)")
    parser.add_argument("--against", metavar="REV",
                        help="also LONGER as git revision REV has it, alternated with this tree's (before/after)")
    parser.add_argument("--malloc", choices=["trainer", "default"], default="trainer",
                        help="CPU: glibc malloc as the trainer sets it (components/allocator.py: large blocks "
                             "stay in the heap) or glibc's defaults")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("overrides", nargs="*", help="model.key=value")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and args.malloc == "trainer" and not keep_freed_memory():
        args.malloc = "default (the trainer's settings were refused)"
    if args.clock is None:
        args.clock = "cpu" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall"
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.bf16 is None:
        args.bf16 = ["tokens", "attention", "ffn", "head"] if args.dtype == "bfloat16" else []
    overrides = list(args.overrides)
    args.lengths = args.lengths or ([] if args.smoke else [1000, 2000, 3000, 5000, 7500, 10000])
    if args.smoke:
        args.lengths = args.lengths or [24, 40]
        args.batch, args.repeats, args.warmup, args.peak_size = 2, 1, 1, 64
        args.transformer_max_len = 40
        overrides = ["model.token_dim=8", "model.merge_k=4", "model.num_queries=3", "model.head_dim=16",
                     "model.head_hidden=[16]", *overrides]
    cfg = model_config(overrides)
    if args.against:
        args.against_pkg, args.against_commit = import_revision(args.against, Path(tempfile.mkdtemp()))
    load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"
    command = f"python {shlex.join(['benchmarks/dense_step.py', *(sys.argv[1:] if argv is None else argv)])}"
    def write(rows: list[dict]) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(f"# Dense model step: LONGER, the Transformer baseline, the stock encoder\n\n"
                                f"{markdown(rows, args, cfg, command, load)}\n")

    rows = run(args, cfg, write)
    write(rows)
    print(markdown(rows, args, cfg, command, load))


if __name__ == "__main__":
    main()
