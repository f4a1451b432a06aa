"""Checkpoints with torch.distributed.checkpoint (sharded tables, dense weights, both optimizers, LR
schedule, step), written atomically: into a hidden temporary directory that is renamed once complete, so a
crash mid-save never leaves a directory that looks like a checkpoint. The sharding plan and the resolved
config are saved beside the tensors as JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], meta: dict[str, Any], is_main: bool) -> Path:
    """Save `state` (all ranks call this) as `directory/step_<step>`; returns that path."""
    final = directory / f"step_{step:08d}"
    tmp = directory / f".step_{step:08d}.tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(state, checkpoint_id=str(tmp))
    dist.barrier()
    if is_main:
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    dist.barrier()
    return final


def load_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Load in place into `state` (built with the same structure as when it was saved)."""
    dcp.load(state, checkpoint_id=str(path))
