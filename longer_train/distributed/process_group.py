"""Process-group setup: gloo on CPU, nccl on CUDA, chosen from the device; works with or without torchrun.

Without torchrun (a plain `longer-train` call) it starts a one-process group on an in-memory store, so the
same code path (DistributedModelParallel, collectives) runs at world size 1.
"""

from __future__ import annotations

import os
import re
import time
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


# how a collective that waited its whole timeout fails (gloo: "Timed out waiting 600000ms for recv operation ...";
# the process group's own: "... timed out after ..."); NCCL's watchdog ends the process instead (no exception)
_TIMEOUT = re.compile(r"timed out", re.IGNORECASE)


def is_collective_timeout(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and bool(_TIMEOUT.search(str(err)))


class Heartbeat:
    """Each rank's last finished step, and when, in the job's rendezvous store (one small write a step), so that
    a collective that timed out can name the rank it waited for instead of only saying it waited."""

    def __init__(self, env: DistEnv) -> None:
        self.rank, self.world = env.rank, env.world_size
        self.store = dist.distributed_c10d._get_default_store() if env.world_size > 1 else None

    def beat(self, step: int) -> None:
        if self.store is not None:
            self.store.set(f"heartbeat/{self.rank}", f"{step} {time.time():.3f}")

    def describe(self, timeout_s: float) -> str:
        """Which ranks fell behind, read from the store (each rank's last step and how long ago)."""
        now, last = time.time(), {}
        if self.store is not None:
            for rank in range(self.world):
                key = f"heartbeat/{rank}"
                try:  # check first: a get of a missing key waits the store's whole timeout
                    if not self.store.check([key]):
                        raise KeyError(key)
                    step, when = self.store.get(key).decode().split()
                    last[rank] = (int(step), now - float(when))
                except Exception:  # noqa: BLE001 -- a rank that never finished a step, or a store gone too
                    last[rank] = None
        ahead = max((v[0] for v in last.values() if v), default=0)
        behind = [f"rank {r} " + (f"last finished step {v[0]}, {v[1]:.0f} s ago" if v else "finished no step")
                  for r, v in sorted(last.items()) if not v or v[0] < ahead]
        who = "; ".join(behind) if behind else "no rank is behind in steps (a hang inside a step or in evaluation)"
        return (f"rank {self.rank}: a collective waited parallel.collective_timeout_s={timeout_s:g} s for the other "
                f"ranks: {who}; such a rank is stopped, hung or cut off (SIGSTOP, a debugger, a deadlock, a lost "
                "network link); raise parallel.collective_timeout_s if pauses that long are expected")
