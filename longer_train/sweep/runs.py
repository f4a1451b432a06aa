"""What every multi-run experiment shares (`longer-sweep`, benchmarks/quality.py): the named datasets and how to
prepare them, the fixed settings of a benchmark run, one `longer-train` process per run, the model statistics
put beside a run's metrics (dense parameters, analytic and `FlopCounterMode`-measured FLOPs), and formatting."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config

BIN = Path(sys.executable).parent  # longer-train / longer-data of the same environment


@dataclass(frozen=True)
class Dataset:
    src: str | None  # default --src of `longer-data prepare` (relative to the repo root); None: the generator
    sample_users: int  # default --sample-users (0 = every user; the generator's --users for synthetic data)
    rows_per_user: int  # default --rows-per-user: at most this many rows per user and split (0 = all)
    out: str  # prepared folder; the subsample is appended, e.g. data/movielens-1m-partial-r3
    config: str = ""  # dataset config under configs/datasets/ (default: <name>.yaml)
    generator: tuple[str, ...] = ()  # more `longer-data synthetic` arguments
    # the quality benchmark's batches: 64 for the small capped datasets (~8k training rows: ~130 steps of one
    # epoch, where batches of 256 gave 33, 20 of them warmup); the match task's 48k rows keep 256
    batch_size: int = 64


MATCH = ("--task", "match", "--variant")
DATASETS = {
    "synthetic": Dataset(None, 800, 0, "data/synthetic"),
    "match_long": Dataset(None, 6000, 0, "data/match_long", "synthetic_match.yaml", (*MATCH, "long"), 256),
    "match_recent": Dataset(None, 6000, 0, "data/match_recent", "synthetic_match.yaml", (*MATCH, "recent"), 256),
    # the final model's own history length (issue 30 item 5): 2,000-event histories, ~54k training rows
    "synthetic_2000": Dataset(None, 4500, 0, "data/synthetic-2000", "synthetic.yaml", ("--max-len", "2000"), 256),
    "movielens": Dataset("../shared/data/movielens-1m-partial", 0, 3, "data/movielens-1m-partial"),
    "taobao": Dataset("../shared/data/taobao-userbehavior-head", 0, 24, "data/taobao-head"),
}

# peer rows: a public library's model, trained by its own code on the same prepared data; the script takes
# longer-train's arguments (CONFIG ... key=value) and appends a results line of the same keys to train.runs_table
PEERS = {"fuxictr_din": "benchmarks/peer_fuxictr.py"}

# every benchmark run: one validation pass at the end, no checkpoint, no progress bar (a sweep or the quality
# benchmark may add to these; later overrides win)
RUN_SETTINGS = ["train.eval_every=0", "train.checkpoint=false", "train.progress_bar=false"]


def prepare_command(data: str, src: str | None, sample_users: int, rows_per_user: int) -> tuple[list[str], str]:
    """The `longer-data` command that prepares dataset `data` and the folder it writes (relative path)."""
    if data not in DATASETS:
        raise ValueError(f"unknown dataset {data!r}; expected one of {sorted(DATASETS)}")
    spec = DATASETS[data]
    suffix = (f"-u{sample_users}" if sample_users else "") + (f"-r{rows_per_user}" if rows_per_user else "")
    out = spec.out + suffix
    if spec.src is None:
        if rows_per_user:
            raise ValueError("rows_per_user applies to prepared datasets, not to synthetic")
        users = ["--users", str(sample_users)] if sample_users else []
        return [str(BIN / "longer-data"), "synthetic", *spec.generator, "--out", out, *users], out
    sample = (["--sample-users", str(sample_users)] if sample_users else []) + (
        ["--rows-per-user", str(rows_per_user)] if rows_per_user else [])
    return [str(BIN / "longer-data"), "prepare", data, "--src", src or spec.src, "--out", out, *sample], out


def ensure_prepared(command: list[str], out: str | Path) -> None:
    """Run `command` unless `out` is already a complete prepared folder."""
    if not (Path(out) / ".complete").exists():
        print("$ " + " ".join(command), flush=True)
        subprocess.run(command, check=True)


def env_prefix(env: dict[str, str]) -> str:
    """`env` as a shell command's leading assignments ("K=V " each), for logs and reports."""
    return "".join(f"{k}={shlex.quote(v)} " for k, v in env.items())


def thread_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a run: this process's, then `extra` (the spec's `env`), limited to `threads` CPU
    threads (torch reads these at start-up)."""
    return {**os.environ, **(extra or {}), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def model_stats(cfg: Config) -> dict[str, float]:
    """Dense parameters and forward GFLOPs per sample at data.max_len: analytic (the models' `flops`, what
    run summaries report) and measured by `FlopCounterMode` on a random full-length history."""
    from ..models.flops import counted_flops  # torch, torchrec and the models only when needed
    from ..models.ranking import build_model, dense_dims

    model = build_model(cfg)  # embedding tables on the meta device: nothing allocated
    dims, dense = dense_dims(cfg, model.sparse), model.dense.eval()
    lengths = [cfg.data.max_len]
    return {
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "gflops_analytic": dense.flops(lengths) / 1e9,
        "gflops_counted": counted_flops(dense, dims, lengths) / 1e9,
    }


def mean_std(values: list[float], digits: int) -> str:
    """`mean ± sample std` (just the value for one)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def machine(threads: int | str | None = None) -> str:
    """The machine line of a report; `threads`: the torch threads each run had (default: this process's)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    load = f", load average {os.getloadavg()[0]:.1f} when this report was written" if hasattr(os, "getloadavg") else ""
    return (f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, torch threads {threads} per run{load}; "
            "the cores were shared with other jobs, so samples/s and minutes are rough")
