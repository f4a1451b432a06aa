"""InnerTrans token merge on ragged batches: the block run only on the groups holding an event (what the model
does) against the same block run on every group of the padded batch, forward + backward, and the ratio.

A batch is padded to its longest history, so the share of all-padding groups is what the length
distribution makes it: `real` draws lengths from MovieLens percentiles (as benchmarks/kernels.py does),
`full` gives every row the full length (nothing to skip: the cost of the check itself).

    python benchmarks/token_merge.py [--lengths 512 2000] [--batch 256] [--out FILE]
    python benchmarks/token_merge.py --smoke
"""

from __future__ import annotations

import argparse
import runpy
import statistics
import sys
import time
from pathlib import Path

import torch

from longer_train.models.token_merge import TokenMerge

HERE = Path(__file__).resolve().parent
sample_lengths = runpy.run_path(str(HERE / "kernels.py"), run_name="benchmark")["sample_lengths"]


def time_ms(merge: TokenMerge, tokens: torch.Tensor, valid: torch.Tensor, live: int, reps: int) -> tuple[float, float]:
    """Median ms of forward + backward (through the inputs and the block's parameters) over every group and
    over the live groups only; on CPU the two alternate rep by rep, so drift in the machine's load hits both."""
    def step(skip: bool):
        x = tokens.detach().requires_grad_()
        out = merge(x, valid, live if skip else None)
        out.backward(torch.ones_like(out))

    if tokens.is_cuda:
        from triton.testing import do_bench

        return tuple(float(do_bench(lambda skip=skip: step(skip), warmup=10, rep=100, return_mode="median"))
                     for skip in (False, True))
    times = {False: [], True: []}
    for skip in (False, True):
        step(skip)  # warm-up
    for _ in range(reps):
        for skip in (False, True):
            start = time.perf_counter()
            step(skip)
            times[skip].append(time.perf_counter() - start)
    return 1000 * statistics.median(times[False]), 1000 * statistics.median(times[True])


def run(args: argparse.Namespace) -> list[list[str]]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    merge = TokenMerge("inner_trans", args.merge_k, args.token_dim, None, heads=args.heads, ffn_mult=4,
                       norm="layernorm", attention_impl="auto").to(device)
    rows = []
    for raw_len in args.lengths:
        for dist in args.dists:
            lengths = sample_lengths(dist, raw_len, args.batch, torch.Generator().manual_seed(raw_len))
            total = -(-int(lengths.max()) // args.merge_k) * args.merge_k
            valid = (torch.arange(total)[None, :] >= (total - lengths)[:, None]).to(device)
            tokens = torch.randn(args.batch, total, args.token_dim, device=device)
            live = int((-(-lengths // args.merge_k)).sum())
            groups = args.batch * total // args.merge_k
            every, only_live = time_ms(merge, tokens, valid, live, args.reps)
            rows.append([str(raw_len), f"{dist} (mean {lengths.float().mean():.0f})", str(args.batch),
                         f"{live / groups:.0%}", f"{every:.3g}", f"{only_live:.3g}", f"{every / only_live:.2f}x"])
            print(" | ".join(rows[-1]), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2000])
    parser.add_argument("--dists", nargs="+", default=["real", "full"], choices=["real", "full"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--merge-k", type=int, default=8)
    parser.add_argument("--token-dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one rep (tests)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.batch, args.reps = [64], 8, 1
    command = "python benchmarks/token_merge.py " + " ".join(argv if argv is not None else sys.argv[1:])
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    rows = run(args)
    table = "\n".join([
        "# InnerTrans token merge: groups holding an event only vs every group", "",
        f"command: `{command.strip()}`", "",
        f"{device}, fp32; K={args.merge_k}, d={args.token_dim}, {args.heads} heads, forward + backward, median of "
        f"{args.reps}. `live` is the share of the padded batch's groups that hold an event.", "",
        "| raw L | lengths | B | live | every group ms | live groups ms | speed-up |",
        "|---|---|---|---:|---:|---:|---:|",
        *("| " + " | ".join(row) + " |" for row in rows), "",
    ])
    print(table)
    if args.out:
        args.out.write_text(table)
    return table


if __name__ == "__main__":
    main()
