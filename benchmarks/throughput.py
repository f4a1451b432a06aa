"""Is training input-bound? For the quickstart and the paper model (configs/quickstart.yaml and configs/paper.yaml,
on the built-in synthetic data): samples/s of a training step on this machine's device against samples/s the real
loader delivers with 1 and 4 workers, measured in one run on the same machine. Input-bound where the loader's
rate is below the step's.

- loader: benchmarks/loader.py `loader_rate` (the training split through build_dataloader, batches after the
  first, so worker start-up is left out), on the synthetic data as `make data` generates it (histories of up to
  512 events), generated into --data if it is not there;
- step, where the full training stack imports (torchrec, fbgemm_gpu, omegaconf, yaml, pyarrow, numpy): the
  Trainer's own step on loaded batches (benchmarks/loader.py `step_rate`: lookups, dense model, both optimizers);
  where it does not (the GPU machine: torch + triton only): the dense model's forward + backward at the config's
  model and batch, every row a full history of min(max_len, 512) events (the data's longest), embeddings as
  plain tensors (benchmarks/dense_step.py) — no lookups and no optimizer, which overstates the step's rate, and
  full rows, which understate it — and the loader rows name the missing module (the loader's batches are
  TorchRec KeyedJaggedTensors, so the loader needs the stack too).
Each row is written to --out as soon as it is measured; the step first, then the loader at each worker count.

    python benchmarks/throughput.py [--workers 1 4] [--batches 30] [--steps 10] [--data data/synthetic] \\
        [--out FILE]
    python benchmarks/throughput.py --smoke      # tiny sizes on CPU (the dry run of `make gpu-check`)
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # dense_step.py and loader.py, however this is run
import dense_step as ds  # noqa: E402

from longer_train.config import ModelConfig, ParallelConfig  # noqa: E402

# the configs' model settings (ModelConfig fields off their defaults), batch size and history length, for machines
# without a YAML reader; tests/test_benchmark_scripts.py checks them against load_config of each config
CONFIGS = {
    "quickstart": ("configs/quickstart.yaml", dict(token_dim=16, merge_k=8, head_hidden=[128, 64]), 256, 512),
    "paper": ("configs/paper.yaml", dict(merge="inner_trans", merge_k=8, num_queries=100, head_dim=64,
                                         head_hidden=[128, 64]), 64, 2000),
}
DATA_HISTORY = 512  # the longest history of `longer-data synthetic`'s data (datasets/synthetic.py: generate's max_len)
STACK = ("pyarrow", "numpy", "omegaconf", "yaml", "torchrec", "fbgemm_gpu")
# the trainer's settings for a benchmark run: no logging service, no progress bar, no checkpoints
OVERRIDES = ["logging.wandb_mode=disabled", "train.progress_bar=false", "train.checkpoint=false"]


def missing_module() -> str | None:
    """The first module of the training stack this python cannot import, None if all import."""
    for name in STACK:
        try:
            importlib.import_module(name)
        except ImportError:
            return name
    return None


def dense_rate(settings: dict, batch: int, max_len: int, device: str, steps: int) -> float:
    """Samples/s of the dense model's forward + backward (the trainer's default policies: fp32, no recompute)."""
    model = ds.build(ModelConfig(**settings), max_len, device, ParallelConfig())
    x = ds.make_inputs(torch.full((batch,), max_len), device, torch.Generator().manual_seed(0))
    for _ in range(2):  # allocator, Triton compilation and autotuning
        ds.step(model, x)
    return batch / statistics.median(ds.timed_step(model, x, device) for _ in range(steps))


def trainer_config(path: str, data: Path, runs: Path, extra: list[str]):
    from longer_train.config import load_config
    from longer_train.machine import resolve

    return resolve(load_config(path, [*OVERRIDES, f"data.root={data}", f"train.output_dir={runs}",
                                      f"train.runs_table={runs / 'runs.jsonl'}", *extra]))


def ensure_data(root: Path, users: int | None) -> None:
    """The synthetic data (`longer-data synthetic`'s defaults; `users` users if given) unless already there."""
    from longer_train.datasets import synthetic

    if not (root / ".complete").exists():
        synthetic.generate(root, **({"users": users} if users else {}))


def verdict(rows: list[dict]) -> list[str]:
    """Per config and worker count: input-bound or not, from the step's and the loader's rows."""
    out = []
    for name in dict.fromkeys(r["config"] for r in rows):
        step = next((r for r in rows if r["config"] == name and r["what"].startswith("step")), None)
        for r in rows:
            if r["config"] == name and r["what"] == "loader" and r["rate"] and step and step["rate"]:
                bound = "input-bound" if r["rate"] < step["rate"] else "not input-bound"
                out.append(f"- {name}, {r['workers']} loader worker(s): {bound} (loader {r['rate']:,.0f} samples/s, "
                           f"{step['what']} {step['rate']:,.0f} samples/s: {r['rate'] / step['rate']:.2f}x)")
    return out


def markdown(rows: list[dict], command: str, device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    lines = ["# Trainer throughput: the step against the real loader", "", f"Command: `{command}`", "",
             f"Device: {name}; torch {torch.__version__}; wall clock", "",
             "| config | batch | max_len | what | loader workers | samples/s | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = f"{r['rate']:,.0f}" if r["rate"] else "-"
        lines.append(f"| {r['config']} | {r['batch']} | {r['max_len']} | {r['what']} | {r['workers']} | {rate} | "
                     f"{r['note']} |")
    lines += ["", *verdict(rows)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, on_row) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    missing = missing_module()
    rows = []

    def add(**row) -> None:
        rows.append(row)
        print(row, flush=True)
        on_row(rows)

    for name in args.configs:
        path, settings, batch, max_len = CONFIGS[name]
        common = dict(config=name, batch=batch, max_len=max_len)
        if args.smoke:
            settings = dict(settings, token_dim=8, merge_k=4, num_queries=3, head_dim=16, head_hidden=[16])
            batch = max_len = common["batch"] = common["max_len"] = 8
        if missing is None:
            extra = [f"data.batch_size={batch}", f"data.max_len={max_len}"]
            ensure_data(args.data, args.users)
            from loader import loader_rate, step_rate

            step = step_rate(trainer_config(path, args.data, args.runs, extra), args.steps)
            add(**common, what="step (Trainer)", workers="", rate=step,
                note="lookups, dense model, both optimizers")
            for workers in args.workers:
                cfg = trainer_config(path, args.data, args.runs, extra)
                add(**common, what="loader", workers=workers, rate=loader_rate(cfg, workers, args.batches), note="")
        else:
            start = time.perf_counter()
            length = min(max_len, DATA_HISTORY)
            rate = dense_rate(settings, batch, length, device, args.steps)
            add(**common, what="step (dense model)", workers="", rate=rate,
                note=f"forward + backward only, rows of {length} events ({time.perf_counter() - start:.0f} s with "
                     "compilation)")
            for workers in args.workers:
                add(**common, what="loader", workers=workers, rate=None,
                    note=f"not measured: this python has no {missing} (the loader needs {', '.join(STACK)})")
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4], help="loader worker counts")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per loader rate")
    parser.add_argument("--steps", type=int, default=10, help="steps timed per step rate")
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"),
                        help="the synthetic data (`make data`'s folder; generated there if missing)")
    parser.add_argument("--runs", type=Path, default=Path("build/throughput-runs"), help="the trainer's output")
    parser.add_argument("--users", type=int, help="users of generated data (default: longer-data's)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and batches (checks the script runs)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batches, args.users = 1, 2, args.users or 120
    command = f"python {shlex.join(['benchmarks/throughput.py', *(sys.argv[1:] if argv is None else argv)])}"
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def write(rows: list[dict]) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(markdown(rows, command, device))

    table = markdown(run(args, write), command, device)
    print(table)
    return table


if __name__ == "__main__":
    main()
