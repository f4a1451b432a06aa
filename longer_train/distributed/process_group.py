"""Process-group setup: gloo on CPU, nccl on CUDA, chosen from the device; works with or without torchrun.

Without torchrun (a plain `longer-train` call) it starts a one-process group on an in-memory store, so the
same code path (DistributedModelParallel, collectives) runs at world size 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

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


def _store(rank: int, world_size: int, timeout: timedelta) -> dist.Store:
    """The rendezvous store, with a prefix per torchrun attempt. Under torchrun the agent hosts the store
    and keeps it across restarts: without the prefix, a restarted rank can read the address its peer
    published in the previous attempt and fail to connect (seen with --max-restarts on gloo)."""
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
        is_master=rank == 0 and not agent_store, timeout=timeout,
    )
    return dist.PrefixStore(f"longer-train/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def init_distributed(device: str = "auto", timeout_s: int = 600) -> DistEnv:
    """Initialise (or reuse) the default process group and pick this rank's device. Launched by torchrun
    (RANK etc. in the environment) it joins the job; otherwise it is a group of one, in-process."""
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
        timeout = timedelta(seconds=timeout_s)
        if "RANK" in os.environ:
            rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            store = _store(rank, world_size, timeout)
        else:
            rank, world_size, store = 0, 1, dist.HashStore()
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def destroy_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

