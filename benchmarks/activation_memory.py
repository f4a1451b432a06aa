"""Claim 7's memory side at the paper's settings: what bf16 and activation recomputation cut from a training step
of the final model (configs/experiments/longer_paper.yaml: d = 32, Merge8 + InnerTrans, k = 100, candidate match
off) at 1,000-2,000-event histories.

Per row (compute policy, `parallel.bf16` / `parallel.recompute` as the trainer applies them):
- activations kept for backward: the bytes autograd saves in forward (saved_tensors_hooks; each storage once,
  the parameters themselves not), the memory recomputation exists to cut; exact and the same on every machine;
- step peak: the most memory one forward + backward holds above what was allocated before it (CPU: the rise of
  the process's peak RSS after a malloc_trim, so rough; CUDA: max_memory_allocated);
- gradients: whether every parameter and input gradient is bitwise equal to the same precision without
  recomputation (recomputation must change memory only).

    python benchmarks/activation_memory.py [--lengths 1000 2000 --batch 8]
    python benchmarks/activation_memory.py --out benchmarks/results/activation_memory_cpu.md   # make reproduce

`make reproduce` writes the committed table. The bf16 rows' AUC is measured by `make reproduce SWEEP=precision`.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path

import torch
from torch.autograd.graph import saved_tensors_hooks

from longer_train.config import ParallelConfig

BF16 = ["tokens", "attention", "ffn", "head"]  # every dense component, as the precision sweep's bf16 rows
POLICIES = [  # (row, parallel.bf16, parallel.recompute)
    ("fp32", [], "none"),
    ("fp32, recompute inner_trans", [], "inner_trans"),
    ("fp32, recompute cross", [], "cross"),
    ("fp32, recompute self", [], "self"),
    ("fp32, recompute all", [], "all"),
    ("bf16", BF16, "none"),
    ("bf16, recompute all", BF16, "all"),
]


def _dense_step():
    """benchmarks/dense_step.py as a module: the same model builder, inputs and step-peak measurement."""
    spec = importlib.util.spec_from_file_location("dense_step_bench", Path(__file__).with_name("dense_step.py"))
    module = sys.modules["dense_step_bench"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(bench, length: int, batch: int, bf16: list[str], recompute: str, device: str) -> dict:
    """One row: saved-for-backward bytes, the step peak and the gradients of one step on fixed inputs."""
    cfg = bench.model_config(["model.merge=inner_trans", "model.candidate_match=none"])
    model = bench.build(cfg, length, device, ParallelConfig(bf16=bf16, recompute=recompute))
    lengths = torch.full((batch,), length)
    x = bench.make_inputs(lengths, device, torch.Generator().manual_seed(1))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}  # what autograd keeps: each storage once, the parameters themselves not

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        bench.step(model, x)
    saved = sum(storages.values())
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    grads.update({name: getattr(x, name).grad.detach().clone() for name in ("events", "candidate", "user")})
    peak = bench.peak_memory(model, x, device)
    return {"saved": saved, "peak": peak, "grads": grads}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def table(lengths: list[int], batch: int, device: str, command: str) -> str:
    bench = _dense_step()
    lines = [
        "# Activation memory of a training step: bf16 and recomputation (claim 7)",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {device}; torch {torch.__version__}; {torch.get_num_threads()} torch thread(s); the final model "
        f"(configs/experiments/longer_paper.yaml: d = 32, Merge8 + InnerTrans, k = 100, candidate match off), "
        f"batch {batch}, full-length rows. bf16 = parallel.bf16 {BF16} (norms, embeddings and the loss stay fp32).",
        "",
        "| events | policy | activations kept for backward MiB | vs fp32 | step peak MiB | vs fp32 | gradients |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for length in lengths:
        base: dict[str, dict] = {}  # per precision: the row without recomputation
        first = None
        for name, bf16, recompute in POLICIES:
            row = measure(bench, length, batch, bf16, recompute, device)
            first = first or row
            precision = "bf16" if bf16 else "fp32"
            if recompute == "none":
                base[precision] = row
                grads = "reference" if not bf16 else "bf16 (not compared)"
            else:
                grads = ("bitwise equal to " + precision) if _same(row["grads"], base[precision]["grads"]) \
                    else "DIFFER from " + precision
            peak = "n/a" if row["peak"] is None else f"{row['peak'] / 2**20:,.0f}"
            peak_ratio = "n/a" if row["peak"] is None or not first["peak"] else f"{row['peak'] / first['peak']:.2f}x"
            lines.append(f"| {length:,} | {name} | {row['saved'] / 2**20:,.1f} | {row['saved'] / first['saved']:.2f}x "
                         f"| {peak} | {peak_ratio} | {grads} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    command = "python benchmarks/activation_memory.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = table(args.lengths, args.batch, args.device, command)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
