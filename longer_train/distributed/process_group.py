"""Process-group setup: gloo on CPU, nccl on CUDA, chosen from the device; works with or without torchrun.

Without torchrun (a plain `longer-train` call) it starts a one-process group on a free local port, so the
same code path (DistributedModelParallel, collectives) runs at world size 1.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str = "auto", timeout_s: int = 600) -> DistEnv:
    """Initialise (or reuse) the default process group and pick this rank's device."""
    if "RANK" not in os.environ:  # not launched by torchrun: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_gather_arrays(array: np.ndarray) -> np.ndarray:
    """Concatenate a 1-D numpy array from every rank (eval predictions); identity at world size 1."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return array
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, array)
    return np.concatenate(parts)
