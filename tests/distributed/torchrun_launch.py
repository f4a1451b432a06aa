"""Launchers for the multi-process tests: 2 CPU ranks on gloo, as TorchRec's own distributed tests do."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_ENV = {"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def torchrun(nproc: int, args: list[str], timeout: int = 300, extra: list[str] = ()) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=nproc ARGS`; returns the finished process (never raises on
    a non-zero exit: the tests look at it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra, *args]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **_ENV}, capture_output=True, text=True, timeout=timeout)


def launch_env() -> dict[str, str]:
    """The environment launch/torchrun.sh runs with in tests (this interpreter, no restarts)."""
    return {**os.environ, **_ENV, "PYTHON": sys.executable, "MAX_RESTARTS": "0"}


def launch(args: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """`launch/torchrun.sh ARGS` with its settings (NPROC_PER_NODE, NNODES, MAX_RESTARTS, ...) from `env`."""
    cmd = [str(REPO / "launch" / "torchrun.sh"), *args]
    return subprocess.run(cmd, cwd=REPO, env={**launch_env(), **env}, capture_output=True, text=True, timeout=timeout)
