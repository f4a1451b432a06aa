"""Training-step throughput at 1 and 2 ranks (and more where there are GPUs), through launch/torchrun.sh:
train samples/s (the trainer's own count: forward, backward, both optimizers and the pipelined input
all-to-all, evaluation excluded), and model FLOPs utilisation on CUDA.

Every run trains the same config for the same number of steps on the same machine; the CPU threads are
split evenly over the ranks (OMP_NUM_THREADS = cores / ranks), so 1 and 2 ranks use the same cores.

    python benchmarks/train_step.py [--config configs/quickstart.yaml --data data/synthetic --steps 40 \
        --ranks 1 2 --threads N --repeats R --out benchmarks/results/train_step_cpu.md] [key=value ...]
    python benchmarks/train_step.py --against HEAD~1 --ranks 1 --threads 1 --repeats 3 [...]
    python benchmarks/train_step.py --variants parallel.compile=false parallel.compile=true --clock cpu [...]

`--clock cpu` measures the CPU time of the runs instead (user + system, of the run and its loader workers):
each run once with --steps and once with --short-steps, so that start-up and the final evaluation cancel,
giving CPU ms per training step. On a machine shared with other jobs, whose load inflates wall-clock
times by whatever they happen to do, this is the figure that compares code. It also leaves out what a run
pays once, such as torch.compile's compile (`parallel.compile`, in both runs): every code and variant runs
once with --short-steps first, discarded, so that Inductor's compile cache (in the benchmark's temporary
folder) is warm for every measured run, which then pays the same lookup and tracing. The wall clock's
samples/s include the compile (the first step's time).

`--against REV` also trains the code of git revision REV (exported with `git archive` into a temporary
folder, run with the same python and packages, the same config and data) and alternates the two trees in
one process, repeat by repeat (A B, then B A, ...), so that both see the same machine load; the table gives
each tree's median samples/s and the median of the per-repeat ratios. `--variants A B ...` does the same with
this tree under different config overrides (each a quoted, space-separated list, added to the common
overrides), e.g. `--variants parallel.compile=false parallel.compile=true`.

MFU = 3 x forward FLOPs/sample x samples/s / (ranks x --peak-tflops): 3 counts forward + backward (about
twice the forward); the FLOPs are the model's analytic forward FLOPs at max_len (an upper bound per
sample: shorter histories do less work), so MFU is an upper bound too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(tree: Path, config: str, data: str, ranks: int, steps: int, threads: int | None, overrides: list[str],
        workdir: Path) -> dict:
    """One training run of the code in `tree` (its launch/torchrun.sh, `python -m longer_train.train` from
    there, so that tree's longer_train is the one imported); the trainer's summary line."""
    cores = os.cpu_count() or 1
    env = {
        **os.environ, "NPROC_PER_NODE": str(ranks), "MAX_RESTARTS": "0", "PYTHON": sys.executable,
        "OMP_NUM_THREADS": str(threads or max(1, cores // ranks)), "WANDB_MODE": "disabled",
        "PYTHONPATH": str(tree),  # ahead of the editable install of this checkout
    }
    workdir.mkdir(parents=True, exist_ok=True)
    table = workdir / f"runs-{ranks}.jsonl"
    cmd = [
        str(tree / "launch" / "torchrun.sh"), config, f"data.root={Path(data).resolve()}", f"train.max_steps={steps}",
        f"train.output_dir={workdir}", f"train.run_name=bench-{ranks}", f"train.runs_table={table}",
        "train.eval_every=0", "train.checkpoint=false", "train.resume=never", "train.progress_bar=false",
        "logging.wandb_mode=disabled", *overrides,
    ]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(table.read_text().splitlines()[-1])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_ms_per_step(tree: Path, args: argparse.Namespace, ranks: int, overrides: list[str],
                    workdir: Path) -> tuple[float, dict]:
    """CPU ms per training step (all ranks and loader workers): a run of --steps minus one of --short-steps."""
    cpu = []
    for steps in (args.short_steps, args.steps):
        start = children_cpu()
        summary = run(tree, args.config, args.data, ranks, steps, args.threads, overrides, workdir / f"steps-{steps}")
        cpu.append(children_cpu() - start)
    return (cpu[1] - cpu[0]) / (args.steps - args.short_steps) * 1e3, summary


def export_revision(rev: str, dest: Path) -> str:
    """The tree of git revision `rev` written to `dest`; returns its short commit id."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # kernels/ is installed as longer_train.kernels: inside the copy's package, or the editable install's
    # mapping would import this checkout's kernels with that revision's model
    (dest / "kernels").rename(dest / "longer_train" / "kernels")
    return commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, help="torch threads per rank (default: cores / ranks)")
    parser.add_argument("--against", metavar="REV", help="also run git revision REV, alternated with this tree")
    parser.add_argument("--this", metavar="REV", help="run git revision REV in place of the working tree")
    parser.add_argument("--variants", nargs="+", metavar="OVERRIDES",
                        help="run this tree once per set of overrides (quoted, space-separated), alternated")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (ranks, tree); medians reported")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall: the trainer's samples/s; cpu: CPU ms per step (see above)")
    parser.add_argument("--short-steps", type=int, default=5, help="--clock cpu: steps of the shorter run")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="per-GPU dense bf16 peak (H100/H200 SXM)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data.batch_size=512")
    args = parser.parse_args()
    if args.variants and args.against:
        parser.error("--variants and --against: compare one thing at a time")

    import torch  # after argument parsing: --help stays fast

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        # Inductor (parallel.compile): the runs' own cache, and the compile in the run's process, so that its CPU
        # time is counted with the run's (a pool of compile worker processes may outlive the run, uncounted)
        os.environ.update(TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"), TORCHINDUCTOR_COMPILE_THREADS="1")
        tree = REPO
        if args.this:  # a frozen copy: the working tree may change while the runs go on
            commit = export_revision(args.this, Path(tmp) / "this")
            tree = Path(tmp) / "this"
        # what is compared: (name, tree, overrides of its own)
        trees = [(f"{args.this} ({commit})" if args.this else "this tree", tree, [])]
        if args.against:
            commit = export_revision(args.against, Path(tmp) / "against")
            trees.append((f"{args.against} ({commit})", Path(tmp) / "against", []))
        if args.variants:
            trees = [(variant, tree, shlex.split(variant)) for variant in args.variants]
        warm_up: dict[str, float] = {}  # wall seconds of each discarded first run (caches cold: the compile)
        if args.clock == "cpu":  # one discarded run each: caches warm for every measured run (see above)
            for index, (name, tree, extra) in enumerate(trees):
                start = time.perf_counter()
                run(tree, args.config, args.data, args.ranks[0], args.short_steps, args.threads,
                    [*args.overrides, *extra], Path(tmp) / f"warm-up-{index}")
                warm_up[name] = time.perf_counter() - start
        rates: dict[tuple[int, str], list[float]] = {}
        gflops: dict[int, float] = {}
        for repeat in range(args.repeats):
            for ranks in args.ranks:
                order = trees if repeat % 2 == 0 else trees[::-1]  # A B, B A, ...: no tree always first
                for name, tree, extra in order:
                    workdir = Path(tmp) / f"runs-{repeat}-{ranks}-{[t[0] for t in trees].index(name)}"
                    overrides = [*args.overrides, *extra]
                    if args.clock == "cpu":  # a rate: steps per CPU-second, so that higher is better as with samples/s
                        ms, summary = cpu_ms_per_step(tree, args, ranks, overrides, workdir)
                        rate = 1e3 / ms
                    else:
                        summary = run(tree, args.config, args.data, ranks, args.steps, args.threads, overrides,
                                      workdir)
                        rate = summary["train_samples_per_s"]
                    rates.setdefault((ranks, name), []).append(rate)
                    gflops[(ranks, name)] = summary["gflops_per_sample"]
    threads = args.threads or f"cores / ranks ({os.cpu_count()} cores)"
    lines = [
        f"Command: `python {shlex.join(sys.argv)}`",
        "",
        f"Device: {device}; {threads} torch threads per rank; load average {load:.2f} at the start; config "
        f"{args.config} on {args.data}, {args.steps} steps per run"
        + (f" (and {args.short_steps}, subtracted: CPU time)" if args.clock == "cpu" else "")
        + f", {args.repeats} run(s) of each row"
        + (f", overrides {' '.join(args.overrides)}" if args.overrides else ""),
        *(["", "Discarded first runs (caches cold; Inductor compiling, where parallel.compile is on), wall: "
            + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in warm_up.items())] if warm_up else []),
        "",
        "| ranks | code | train samples/s (median) | runs | vs first row | GFLOPs/sample (fwd) | MFU |"
        if args.clock == "wall" else
        "| ranks | code | CPU ms per step (median) | runs | speed vs first row | GFLOPs/sample (fwd) | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    base = statistics.median(rates[(args.ranks[0], trees[0][0])])
    for ranks in args.ranks:
        for name, _, _ in trees:
            runs = rates[(ranks, name)]
            rate = statistics.median(runs)
            flops = gflops[(ranks, name)]
            wall = cuda and args.clock == "wall"
            mfu = f"{3 * flops * rate / (ranks * args.peak_tflops * 1e3):.2%}" if wall else "n/a"
            shown = runs if args.clock == "wall" else [1e3 / r for r in runs]  # CPU ms per step
            lines.append(f"| {ranks} | {name} | {statistics.median(shown):,.0f} | "
                         f"{', '.join(f'{r:,.0f}' for r in shown)} | {rate / base:.2f}x | {flops:.3g} | {mfu} |")
    speed = "samples/s" if args.clock == "wall" else "steps per CPU-second"
    for other, _, _ in trees[1:]:  # --against, --variants: the per-repeat ratios, each run beside its pair
        lines += ["", f"| ranks | {speed}: {trees[0][0]} / {other} (median of the per-repeat ratios) | per repeat |",
                  "|---|---|---|"]
        for ranks in args.ranks:
            ratios = [a / b for a, b in zip(rates[(ranks, trees[0][0])], rates[(ranks, other)])]
            lines.append(f"| {ranks} | {statistics.median(ratios):.2f}x | {', '.join(f'{r:.2f}' for r in ratios)} |")
    if not cuda and len(args.ranks) > 1:
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
