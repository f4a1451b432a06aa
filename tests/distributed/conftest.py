"""Helpers for the multi-process tests: a tiny synthetic dataset and a torchrun launcher (2 CPU ranks on
gloo, as TorchRec's own distributed tests do)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from longer_train.data import synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist-data")
    synthetic.generate(root, users=300, max_len=64, seed=1)
    return root


def torchrun(nproc: int, args: list[str], timeout: int = 300, extra: list[str] = ()) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=nproc ARGS`; returns the finished process (never raises on
    a non-zero exit: the tests look at it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
