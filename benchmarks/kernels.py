"""Attention kernel benchmarks: the Triton kernels against PyTorch's attention paths at LONGER's shapes.

Ops (one table each), on the padded batch the model holds (raw history lengths sampled per row):
- cross-causal layer: queries = the last min(k, L') + m positions, keys = all L' + m (few queries, many keys);
- self-causal layer: queries = keys = those min(k, L') + m positions;
- InnerTrans group attention: full attention inside each group of K tokens, from the qkv projection
  [G, K, 3d] to the merged [B, L/K, K*d] layout (head split and merge included for every implementation).

Implementations: `triton` (our kernels; the forward splits the key range when B*H leaves SMs idle),
`triton, no split-KV`, `reference` (kernels/reference.py, unfused PyTorch with a materialised mask),
`sdpa-flash` (the padded batch with bottom-right causal masking, `causal_lower_right`, and no padding mask
— flash takes none — so it does the padding's work without masking it: a lower bound on what exact flash
costs), `sdpa-efficient` (memory-efficient SDPA with the exact padding + causal mask as a boolean tensor)
and `flex` (compiled FlexAttention with a block mask).
TFLOP/s and GB/s use the same analytic *useful* work for every implementation: FLOPs of the allowed
(query, key) pairs only (4·dh per pair and head forward, 2.5x that backward) and bytes of the valid rows
(forward: q, k, v read, o written; backward adds q, k, v, o, dO read and dq, dk, dv written).

Length distributions: `full` (every history at raw L) and `real`: the per-user interaction counts of the
real data in shared/data, as a percentile table (computed once from movielens-1m-partial/ratings.dat.gz,
2,999 users; numpy linear percentiles; sampled by linear interpolation in torch) scaled so the longest user
maps to raw L. The public data has no
1k-10k histories (see shared/data/README.md), so the shape of the distribution is real, the scale is not.

    python benchmarks/kernels.py [--lengths 10000 4000 2000 1000] [--batch 512] [--out FILE]

The shapes are the paper model's (benchmarks/dense_step.py `PAPER`: K = 8, d = 32, head dim 64, k = 100);
lengths run in the order given, longest first by default, each row written to --out as soon as it is measured
(a time limit cuts the short, less informative lengths).
    python benchmarks/kernels.py --smoke          # tiny CPU run (what the test runs)

Under the table, on CUDA, the issue's three targets are read off it: forward+backward against the best
SDPA with padding on `real` lengths, the cross-causal forward's share of HBM bandwidth (the spec figure and
a measured device-to-device copy), fused InnerTrans against the unfused reference.

Never imports torchrec or numpy: runs on a machine with torch + triton only.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from longer_train.kernels.dispatch import triton_available
from longer_train.kernels.reference import group_attention_reference, hybrid_attention_reference

from longer_train.components.device_specs import gpu_spec

# percentile -> interactions per user, movielens-1m-partial (shared/data, 2,999 users, mean 162.6)
REAL_PERCENTILES = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100]
REAL_COUNTS = [20, 27, 37, 49, 66, 89, 121, 168, 245, 403, 556, 900, 1850]

COLUMNS = ["op", "raw L", "lengths", "B", "impl", "fwd ms", "fwd TFLOP/s", "fwd GB/s", "fwd+bwd ms",
           "fwd+bwd TFLOP/s", "fwd+bwd GB/s"]


@dataclass
class Work:
    """Analytic useful work of one op call."""

    flops_fwd: float
    bytes_fwd: float
    bytes_fwd_bwd: float


def sample_lengths(dist: str, raw_len: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Raw history lengths [B] in 0..raw_len."""
    if dist == "full":
        return torch.full((batch,), raw_len)
    u = (torch.rand(batch, generator=gen) * 100).double()  # percentiles, as numpy.interp took them before
    xp, fp = torch.tensor(REAL_PERCENTILES, dtype=torch.float64), torch.tensor(REAL_COUNTS, dtype=torch.float64)
    right = torch.searchsorted(xp, u, right=True).clamp(1, len(xp) - 1)
    left = right - 1
    counts = fp[left] + (u - xp[left]) / (xp[right] - xp[left]) * (fp[right] - fp[left])  # linear interpolation
    return torch.round(counts / REAL_COUNTS[-1] * raw_len).clamp(1, raw_len).long()


def hybrid_inputs(lengths: torch.Tensor, merge_k: int, queries: int, globals_: int, heads: int, dh: int,
                  layer: str, device: str, dtype: torch.dtype):
    """q, k, v [B, H, *, dh] and num_pad [B] as the cross- or self-causal layer sees them."""
    merged = (lengths + merge_k - 1) // merge_k
    seq_len = -(-int(lengths.max()) // merge_k)
    num_pad = seq_len - merged
    k_eff = min(queries, seq_len)
    lq, lk = k_eff + globals_, seq_len + globals_
    if layer == "self":
        lk, num_pad = lq, (num_pad - (seq_len - k_eff)).clamp(min=0)
    b = lengths.shape[0]
    make = lambda n: torch.randn(b, heads, n, dh, device=device, dtype=dtype)
    return make(lq), make(lk), make(lk), num_pad.to(device)


def hybrid_work(q: torch.Tensor, k: torch.Tensor, num_pad: torch.Tensor) -> Work:
    b, h, lq, dh = q.shape
    lk = k.shape[2]
    q_pos = torch.arange(lk - lq, lk, device=num_pad.device)
    pairs = (q_pos[None, :] - num_pad[:, None] + 1).clamp(min=0).sum().item()  # allowed (query, key) pairs
    rows_q = (q_pos[None, :] >= num_pad[:, None]).sum().item()
    rows_k = (lk - num_pad).sum().item()
    row = h * dh * q.element_size()
    return Work(4.0 * dh * h * pairs, (2 * rows_q + 2 * rows_k) * row, (6 * rows_q + 6 * rows_k) * row)


def _padding_and_causal_mask(num_pad: torch.Tensor, lq: int, lk: int) -> torch.Tensor:
    kpos = torch.arange(lk, device=num_pad.device)
    allowed = (kpos[None, None, :] >= num_pad[:, None, None]) & (kpos[None, None, :] <= kpos[lk - lq :, None])
    return (allowed | ~allowed.any(-1, keepdim=True))[:, None]  # [B, 1, Lq, Lk]; padded queries see all


def hybrid_impls(q, k, v, num_pad, names: list[str]) -> dict[str, Callable[[], torch.Tensor]]:
    """name -> a call of that implementation on these inputs (mask construction is not timed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    impls: dict[str, Callable[[], torch.Tensor]] = {}
    lq, lk = q.shape[2], k.shape[2]
    if "triton" in names or "triton, no split-KV" in names:
        from longer_train.kernels.hybrid_attention_triton import hybrid_attention_triton

        impls["triton"] = lambda: hybrid_attention_triton(q, k, v, num_pad)
        impls["triton, no split-KV"] = lambda: hybrid_attention_triton(q, k, v, num_pad, num_splits=1)
    impls["reference"] = lambda: hybrid_attention_reference(q, k, v, num_pad)

    def sdpa(backend, mask):
        def call():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return call

    from torch.nn.attention.bias import causal_lower_right

    impls["sdpa-flash"] = sdpa(SDPBackend.FLASH_ATTENTION, causal_lower_right(lq, lk))
    if "sdpa-efficient" in names or "sdpa-math" in names:
        mask = _padding_and_causal_mask(num_pad, lq, lk)
        impls["sdpa-efficient"] = sdpa(SDPBackend.EFFICIENT_ATTENTION, mask)
        impls["sdpa-math"] = sdpa(SDPBackend.MATH, mask)
    if "flex" in names and lq < lk:  # the cross-causal layer only: each shape is a fresh torch.compile
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        offset = lk - lq

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx >= num_pad[b]) & (kv_idx <= q_idx + offset)

        block_mask = create_block_mask(mask_mod, q.shape[0], None, lq, lk, device=q.device)
        torch._dynamo.config.recompile_limit = 64  # one compile per shape
        flex = torch.compile(flex_attention, dynamic=False)
        impls["flex"] = lambda: flex(q, k, v, block_mask=block_mask)
    return {name: fn for name, fn in impls.items() if name in names}


def group_inputs(lengths: torch.Tensor, merge_k: int, token_dim: int, device: str, dtype):
    """qkv [G, K, 3d] and valid [G, K] for the groups of left-padded rows that hold an event: what the model's
    InnerTrans passes on (it skips all-padding groups), so only a row's oldest group can be partly padding."""
    total = -(-int(lengths.max()) // merge_k) * merge_k
    valid = (torch.arange(total)[None, :] >= (total - lengths)[:, None]).reshape(-1, merge_k)
    valid = valid[valid.any(1)]
    qkv = torch.randn(valid.shape[0], merge_k, 3 * token_dim, device=device, dtype=dtype)
    return qkv, valid.to(device)


def group_work(qkv: torch.Tensor, valid: torch.Tensor) -> Work:
    d = qkv.shape[-1] // 3
    per_group = valid.sum(1).double()
    tokens = per_group.sum().item()
    row = d * qkv.element_size()
    return Work(4.0 * d * (per_group**2).sum().item(), 4 * tokens * row, 11 * tokens * row)


def group_impls(qkv, valid, heads: int, names: list[str]) -> dict[str, Callable[[], torch.Tensor]]:
    g, k, _ = qkv.shape

    def merged(attention):
        def call():
            q, key, v = (t.view(g, k, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
            return attention(q, key, v, valid).transpose(1, 2).reshape(g, -1)  # [G, K*d] = [B, L/K, K*d]
        return call

    impls = {"reference": merged(group_attention_reference)}
    if "triton" in names:
        from longer_train.kernels.group_attention_triton import group_attention_triton

        impls["triton"] = merged(group_attention_triton)
    return {name: fn for name, fn in impls.items() if name in names}


def time_ms(fn: Callable[[], torch.Tensor], backward: bool, inputs: list[torch.Tensor], device: str,
            reps: int) -> float:
    """Median ms of fn() (and a backward through it when `backward`)."""
    def step():
        out = fn()
        if backward:
            torch.autograd.grad(out, inputs, torch.ones_like(out))

    if device == "cuda":
        from triton.testing import do_bench

        return float(do_bench(step, warmup=25, rep=100, return_mode="median"))
    step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(name: str, fn, work: Work, inputs: list[torch.Tensor], device: str, reps: int) -> list[str]:
    """Forward and forward+backward cells: ms, TFLOP/s, GB/s ('-' when the implementation fails)."""
    cells = []
    for backward, flops, nbytes in ((False, work.flops_fwd, work.bytes_fwd), (True, 3.5 * work.flops_fwd,
                                                                              work.bytes_fwd_bwd)):
        try:
            ms = time_ms(fn, backward, inputs, device, reps)
            cells += [f"{ms:.3g}", f"{flops / ms / 1e9:.3g}", f"{nbytes / ms / 1e6:.4g}"]
        except Exception as e:  # a baseline that rejects the shape or runs out of memory leaves its cells empty
            print(f"{name}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}", file=sys.stderr)
            cells += ["-", "-", "-"]
    return cells


def run(args: argparse.Namespace, on_row: Callable[[list[list[str]]], None]) -> list[list[str]]:
    """All rows of the table; `on_row(rows so far)` after each one (a time limit still leaves a table).
    FlexAttention goes in a second pass over the shapes: each of its shapes is a fresh compile, so a time
    limit then cuts its rows, not the others'."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    heads = args.merge_k * args.token_dim // args.head_dim
    rows = []
    passes = [[name for name in args.impls if name != "flex"]] + ([["flex"]] if "flex" in args.impls else [])
    for names in passes:
        for raw_len in args.lengths:
            for dist in args.dists:
                lengths = sample_lengths(dist, raw_len, args.batch, torch.Generator().manual_seed(raw_len))
                label = [f"{raw_len}", f"{dist} (mean {lengths.float().mean():.0f})", f"{args.batch}"]
                for layer in ("cross", "self"):
                    q, k, v, num_pad = hybrid_inputs(lengths, args.merge_k, args.queries, args.globals, heads,
                                                     args.head_dim, layer, device, dtype)
                    work = hybrid_work(q, k, num_pad)
                    inputs = [t.requires_grad_() for t in (q, k, v)]
                    for name, fn in hybrid_impls(q, k, v, num_pad, names).items():
                        cells = measure(name, fn, work, inputs, device, args.reps)
                        rows.append([f"{layer}-causal", *label, name, *cells])
                        on_row(_table_order(rows, args.impls))
                qkv, valid = group_inputs(lengths, args.merge_k, args.token_dim, device, dtype)
                work = group_work(qkv, valid)
                qkv.requires_grad_()
                for name, fn in group_impls(qkv, valid, args.inner_heads, names).items():
                    cells = measure(name, fn, work, [qkv], device, args.reps)
                    rows.append([f"group K={args.merge_k}", *label, name, *cells])
                    on_row(_table_order(rows, args.impls))
    return _table_order(rows, args.impls)


def _table_order(rows: list[list[str]], impls: list[str]) -> list[list[str]]:
    """Rows grouped by shape and op in the order first measured, implementations in `impls` order."""
    first: dict[tuple, int] = {}
    for row in rows:
        first.setdefault((row[1], row[2], row[0]), len(first))
    rank = {name: i for i, name in enumerate(impls)}
    return sorted(rows, key=lambda row: (first[(row[1], row[2], row[0])], rank.get(row[4], len(rank))))


def tuned_configs() -> list[str]:
    """The config Triton's autotuner picked, per kernel and tuning key (empty before any CUDA launch)."""
    from longer_train.kernels import group_attention_triton, hybrid_attention_triton
    from longer_train.kernels.tile_ops import Launcher

    lines = []
    for module in (hybrid_attention_triton, group_attention_triton):
        for name, launcher in vars(module).items():
            if isinstance(launcher, Launcher):
                for key, config in getattr(launcher.tuned, "cache", {}).items():
                    lines.append(f"- `{module.__name__.rsplit('.', 1)[1]}.{name}` {key}: {config}")
    return lines


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write), the practical HBM ceiling."""
    from triton.testing import do_bench

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=100)
    return 2 * src.numel() / (ms / 1e3)


def _cell(row: list[str], column: str) -> float | None:
    value = row[COLUMNS.index(column)]
    return None if value == "-" else float(value)


def targets(rows: list[list[str]], hbm: dict[str, float]) -> list[str]:
    """The issue's targets read off the rows: one markdown table row each (none for rows not measured)."""
    by_key: dict[tuple, dict[str, list[str]]] = {}
    for row in rows:
        by_key.setdefault((row[0], row[1], row[2]), {})[row[4]] = row
    out = []
    for (op, raw_len, lengths), impls in by_key.items():
        dist = lengths.split(" ")[0]
        ours = impls.get("triton")
        if ours is None:
            continue
        if op.endswith("-causal") and dist == "real":
            t = _cell(ours, "fwd+bwd ms")
            base = {name: _cell(impls[name], "fwd+bwd ms") for name in ("sdpa-flash", "sdpa-efficient")
                    if name in impls and _cell(impls[name], "fwd+bwd ms") is not None}
            if t and base:
                name = min(base, key=base.get)
                ratio = base[name] / t
                out.append(f"| {op} fwd+bwd vs best SDPA with padding | {raw_len} | {lengths} | "
                           f"{ratio:.2f}x ({name} {base[name]:.3g} ms / triton {t:.3g} ms) | >= 1.5x | "
                           f"{'yes' if ratio >= 1.5 else 'NO'} |")
        if op == "cross-causal" and hbm:
            gbs = _cell(ours, "fwd GB/s")
            if gbs is not None:
                share = {name: gbs * 1e9 / bw for name, bw in hbm.items()}
                spec = share.get("spec", share.get("copy"))
                text = ", ".join(f"{100 * v:.0f}% of {name} {hbm[name] / 1e12:.2f} TB/s" for name, v in share.items())
                out.append(f"| cross-causal fwd HBM bandwidth | {raw_len} | {lengths} | {gbs:.0f} GB/s = {text} | "
                           f">= 60% | {'yes' if spec >= 0.6 else 'NO'} |")
        if op.startswith("group") and "reference" in impls:
            for phase in ("fwd ms", "fwd+bwd ms"):
                ref, t = _cell(impls["reference"], phase), _cell(ours, phase)
                if ref and t:
                    out.append(f"| {op} {phase[:-3]} vs unfused PyTorch | {raw_len} | {lengths} | "
                               f"{ref / t:.2f}x (reference {ref:.3g} ms / triton {t:.3g} ms) | >= 2x | "
                               f"{'yes' if ref / t >= 2 else 'NO'} |")
    return out


def markdown(rows: list[list[str]], args: argparse.Namespace, command: str, hbm: dict[str, float]) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    dtype = "bf16" if torch.cuda.is_available() else "fp32"
    lines = [
        f"# Attention kernels, {device}, {dtype}",
        f"command: `{command}`",
        "",
        f"K={args.merge_k}, d={args.token_dim} (width {args.merge_k * args.token_dim}, head dim {args.head_dim}), "
        f"k={args.queries}, m={args.globals}, InnerTrans heads={args.inner_heads}; torch {torch.__version__}"
        + (f", triton {__import__('triton').__version__}" if triton_available() else "")
        + ". TFLOP/s and GB/s count useful work only (see benchmarks/kernels.py).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 5 else "---:" for i in range(len(COLUMNS))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    checks = targets(rows, hbm)
    if checks:
        lines += ["", "Targets (HBM share is of the spec figure when components/device_specs.py knows the device):",
                  "",
                  "| target | raw L | lengths | measured | target | met |", "|---|---|---|---|---|---|", *checks]
    if torch.cuda.is_available() and triton_available() and (tuned := tuned_configs()):
        lines += ["", "Autotuned configs (kernel, tuning key: config):", "", *tuned]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[10000, 4000, 2000, 1000],
                        help="raw L, measured in this order")
    parser.add_argument("--dists", nargs="+", default=["real", "full"], choices=["real", "full"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--merge-k", type=int, default=8)
    parser.add_argument("--token-dim", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=100, help="k")
    parser.add_argument("--globals", type=int, default=4, help="m")
    parser.add_argument("--inner-heads", type=int, default=1)
    parser.add_argument("--impls", nargs="+", default=None, help="default: all on CUDA, reference + sdpa-math on CPU")
    parser.add_argument("--reps", type=int, default=3, help="timed repeats on CPU (CUDA uses triton's do_bench)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU-sized shapes")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.batch, args.queries, args.reps = [64], 4, 4, 1
    if args.impls is None:
        cuda = torch.cuda.is_available() and triton_available()
        args.impls = (["triton", "triton, no split-KV", "reference", "sdpa-flash", "sdpa-efficient", "flex"]
                      if cuda else ["reference", "sdpa-math"])
    torch.manual_seed(0)
    command = "python benchmarks/kernels.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    hbm = {}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        spec = gpu_spec(name)
        hbm = ({"spec": spec[2] * 1e12} if spec else {}) | {"copy": copy_bandwidth()}

    def write(rows: list[list[str]]) -> None:
        if args.out:
            with open(args.out, "w") as f:
                f.write(markdown(rows, args, command, hbm))

    print(markdown(run(args, write), args, command, hbm))


if __name__ == "__main__":
    main()
