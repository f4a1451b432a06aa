"""Jagged histories -> padded batch: the model's torch code (`inputs.event_rows` + `token_merge.to_left_padded`,
one index_put into a left-padded batch) against fbgemm's `jagged_to_padded_dense` and torch's nested (jagged
layout) `to_padded_tensor`. Both library ops pad on the right, which the model cannot use as is (its layout is
left-padded, newest last); they are timed without the flips they would need (at their best), and the nested op
once more with them (the left-padded layout, what the model could use). Forward + backward through the values,
median of alternated repetitions (issue 18: "use fbgemm's or torch's jagged ops where a measurement says they
are at least as fast"). Results: benchmarks/results/jagged_cpu.md.

    python benchmarks/jagged.py [--batch 256] [--lengths 512 2000] [--dim 32] [--reps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from longer_train.models.inputs import event_rows
from longer_train.models.token_merge import to_left_padded


def _ours(values, lengths, offsets, total):
    return to_left_padded(values, lengths, total, event_rows(lengths, values.shape[0]))[0]


def _fbgemm(values, lengths, offsets, total):
    return torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [total], 0.0)


def _nested(values, lengths, offsets, total):
    return torch.nested.nested_tensor_from_jagged(values, offsets).to_padded_tensor(0.0, (len(lengths), total,
                                                                                          values.shape[1]))


def _nested_left(values, lengths, offsets, total):
    """Left-padded with the nested op: pad the reversed packed values on the right, then flip rows and time."""
    flipped = torch.flip(lengths, (0,))
    rev_offsets = torch.cat([flipped.new_zeros(1), torch.cumsum(flipped, 0)])
    padded = torch.nested.nested_tensor_from_jagged(torch.flip(values, (0,)), rev_offsets).to_padded_tensor(
        0.0, (len(lengths), total, values.shape[1]))
    return torch.flip(padded, (0, 1))


def run(args: argparse.Namespace) -> list[list[str]]:
    import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)

    variants = {"torch index_put (model, left-padded)": _ours, "fbgemm jagged_to_padded_dense (right)": _fbgemm,
                "torch nested to_padded_tensor (right)": _nested,
                "torch nested + flips (left-padded, usable)": _nested_left}
    rows = []
    g = torch.Generator().manual_seed(0)
    for longest in args.lengths:
        lengths = torch.randint(0, longest + 1, (args.batch,), generator=g)
        lengths[0] = longest
        offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
        values = torch.randn(int(lengths.sum()), args.dim, generator=g)
        times = {name: [] for name in variants}
        for rep in range(args.reps + 1):
            for name, fn in variants.items():  # alternated, so load drift hits every variant
                x = values.clone().requires_grad_()
                start = time.perf_counter()
                fn(x, lengths, offsets, longest).sum().backward()
                if rep:  # the first round is a warm-up
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times[next(iter(variants))])
        for name, samples in times.items():
            ms = 1000 * statistics.median(samples)
            rows.append([str(args.batch), str(longest), str(args.dim), name, f"{ms:.2f}", f"{ms / 1000 / base:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2000])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"$ python benchmarks/jagged.py {' '.join(sys.argv[1:])}  (threads={args.threads})")
    print("| batch | longest | dim | variant | fwd+bwd ms (median) | x model |")
    print("|---|---|---|---|---|---|")
    for row in run(args):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
