"""Where a training step's time goes: torch.profiler over steps of the real Trainer (TorchRec pipeline, dense
model, both optimizers), ops grouped into matmuls, copies / layout, elementwise / norms / softmax, embeddings
(TorchRec / FBGEMM), optimizer and the rest; the busiest ops listed.

    python benchmarks/step_profile.py [--config configs/quickstart.yaml --data data/synthetic --threads 1 \
        --warmup 5 --steps 10 --out benchmarks/results/step_profile_cpu.md] [key=value ...]

Self CPU time of the main process (the loader worker runs in its own process and is not in it); profiler
overhead inflates short ops, so read the shares, not the absolute ms. Needs the data (`make data`).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

# first match wins; names are the profiler's op keys
CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm")),
    ("embeddings (TorchRec / FBGEMM)", ("fbgemm::", "[lookup]", "[input_dist]", "[output_dist]")),
    ("optimizer", ("aten::_fused_adam", "aten::_foreach_", "Optimizer.", "aten::_fused_sgd")),
    ("copies / layout", ("aten::copy_", "aten::cat", "aten::fill_", "aten::zero_", "aten::index", "aten::_index_put",
                         "aten::index_put", "aten::index_select", "aten::index_add", "aten::scatter", "aten::gather",
                         "aten::masked_fill", "aten::clone", "aten::empty", "aten::stack", "aten::repeat_interleave")),
    ("elementwise / norms / softmax", ("aten::gelu", "aten::native_layer_norm", "aten::_softmax", "aten::mul",
                                       "aten::add", "aten::div", "aten::sub", "aten::sum", "aten::neg", "aten::exp",
                                       "aten::linalg_vector_norm", "aten::where", "aten::maximum", "aten::amax",
                                       "aten::sigmoid", "aten::binary_cross_entropy", "aten::clamp", "aten::sqrt",
                                       "aten::embedding_dense_backward", "aten::cumsum", "aten::floor", "aten::log2")),
)


def category(name: str) -> str:
    for label, prefixes in CATEGORIES:
        if name.startswith(prefixes):
            return label
    return "other (views, autograd, Python, loader hand-off)"


def profile_steps(config: str, data: str, warmup: int, steps: int, overrides: list[str], workdir: Path):
    """key_averages of `steps` profiled training steps after `warmup` unprofiled ones."""
    from torch.profiler import ProfilerActivity, profile

    from longer_train.config import load_config
    from longer_train.trainer import Trainer

    cfg = load_config([config], [
        f"data.root={data}", f"train.max_steps={warmup + steps + 1}", "train.eval_every=0", "train.checkpoint=false",
        "train.resume=never", "train.progress_bar=false", "logging.wandb_mode=disabled",
        f"train.output_dir={workdir}", *overrides,
    ])
    trainer = Trainer(cfg)
    step = trainer.pipeline.progress if trainer.pipeline is not None else trainer._plain_step
    trainer.model.train()
    batches = iter(trainer.train_loader)
    for _ in range(warmup):
        step(batches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            loss, _, _ = step(batches)
            loss.item()
    return prof.key_averages()


def report(averages, steps: int, top: int) -> list[str]:
    total = sum(e.self_cpu_time_total for e in averages)
    shares = Counter()
    for e in averages:
        shares[category(e.key)] += e.self_cpu_time_total
    lines = ["| share of the step | self CPU ms / step | what |", "|---|---|---|"]
    for label, us in shares.most_common():
        lines.append(f"| {us / total:.1%} | {us / steps / 1e3:.1f} | {label} |")
    lines += ["", f"Busiest {top} ops:", "", "| op | self CPU ms / step | share | calls / step | group |",
              "|---|---|---|---|---|"]
    for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]:
        lines.append(f"| `{e.key[:60]}` | {e.self_cpu_time_total / steps / 1e3:.1f} | "
                     f"{e.self_cpu_time_total / total:.1%} | {e.count / steps:.0f} | {category(e.key)} |")
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--workdir", default="runs/step_profile")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    averages = profile_steps(args.config, args.data, args.warmup, args.steps, args.overrides, Path(args.workdir))
    command = "python benchmarks/step_profile.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        "# Where a training step's time goes", "", f"Command: `{command.strip()}`", "",
        f"Device: CPU, {os.cpu_count()} cores ({platform.machine()}); {args.threads} torch thread(s); torch "
        f"{torch.__version__}; config {args.config} on {args.data}; {args.steps} profiled steps after {args.warmup}; "
        "self CPU time of the training process (torch.profiler; its overhead inflates short ops)", "",
        *report(averages, args.steps, args.top), "",
    ])
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
