"""Training-step throughput at 1 and 2 ranks (and more where there are GPUs), through launch/torchrun.sh:
train samples/s (the trainer's own count: forward, backward, both optimizers and the pipelined input
all-to-all, evaluation excluded), and model FLOPs utilisation on CUDA.

Every run trains the same config for the same number of steps on the same machine; the CPU threads are
split evenly over the ranks (OMP_NUM_THREADS = cores / ranks), so 1 and 2 ranks use the same cores.

    python benchmarks/train_step.py [--config configs/quickstart.yaml --data data/synthetic --steps 40 \
        --ranks 1 2 --out benchmarks/results/train_step_cpu.md] [key=value ...]

MFU = 3 x forward FLOPs/sample x samples/s / (ranks x --peak-tflops): 3 counts forward + backward (about
twice the forward); the FLOPs are the model's analytic forward FLOPs at max_len (an upper bound per
sample: shorter histories do less work), so MFU is an upper bound too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, data: str, ranks: int, steps: int, overrides: list[str], workdir: Path) -> dict:
    cores = os.cpu_count() or 1
    env = {
        **os.environ, "NPROC_PER_NODE": str(ranks), "MAX_RESTARTS": "0", "PYTHON": sys.executable,
        "OMP_NUM_THREADS": str(max(1, cores // ranks)), "WANDB_MODE": "disabled",
    }
    table = workdir / f"runs-{ranks}.jsonl"
    cmd = [
        str(REPO / "launch" / "torchrun.sh"), config, f"data.root={data}", f"train.max_steps={steps}",
        f"train.output_dir={workdir}", f"train.run_name=bench-{ranks}", f"train.runs_table={table}",
        "train.eval_every=0", "train.checkpoint=false", "train.resume=never", "train.progress_bar=false",
        "logging.wandb_mode=disabled", *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(table.read_text().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="per-GPU dense bf16 peak (H100/H200 SXM)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data.batch_size=512")
    args = parser.parse_args()

    import torch  # after argument parsing: --help stays fast

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in args.ranks:
            summary = run(args.config, args.data, ranks, args.steps, args.overrides, Path(tmp))
            rows.append((ranks, summary))
    base = rows[0][1]["train_samples_per_s"]
    lines = [
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
        f"Device: {device}; config {args.config} on {args.data}, {args.steps} steps per run"
        + (f", overrides {' '.join(args.overrides)}" if args.overrides else ""),
        "",
        "| ranks | train samples/s | vs first row | per-rank samples/s | GFLOPs/sample (fwd) | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for ranks, summary in rows:
        rate = summary["train_samples_per_s"]
        gflops = summary["gflops_per_sample"]
        mfu = f"{3 * gflops * rate / (ranks * args.peak_tflops * 1e3):.2%}" if cuda else "n/a (CPU)"
        lines.append(
            f"| {ranks} | {rate:,.0f} | {rate / base:.2f}x | {rate / ranks:,.0f} | {gflops:.3g} | {mfu} |"
        )
    if not cuda:
        lines += ["", "On CPU every row uses the same cores (threads split over the ranks), so the ratio is the "
                  "cost of the gloo all-to-alls and all-reduces at equal compute, not scaling; scaling needs one GPU "
                  "per rank."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"# Training step throughput\n\n{text}\n")


if __name__ == "__main__":
    main()
