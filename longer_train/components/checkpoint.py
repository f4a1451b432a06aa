"""Checkpoints with torch.distributed.checkpoint (DCP): sharded tables, dense weights, the fused sparse and
the dense optimizer state and per-rank RNG states; beside them `meta.json` with what is small and the same
on every rank (the trainer puts the LR schedule, step, data position and metric state there, with the
sharding plan and the resolved config).

Layout: `<run>/checkpoints/step_<N>/`. A save goes into a hidden `.step_<N>.tmp` directory that is renamed
only once every rank has written and `meta.json` is in place, so a crash mid-save leaves at most a
temporary directory, which `latest()` ignores and the next save of that step replaces. Only the latest
`keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader

_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointManager:
    def __init__(self, directory: Path, keep: int, is_main: bool) -> None:
        self.directory, self.keep, self.is_main = Path(directory), keep, is_main

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (a step directory with DCP metadata and meta.json)."""
        if not self.directory.is_dir():
            return []
        found = [
            p for p in self.directory.iterdir()
            if _STEP_DIR.match(p.name) and (p / ".metadata").is_file() and (p / "meta.json").is_file()
        ]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Save `state` (all ranks call this) as `step_<step>`; returns that path."""
        final = self.directory / f"step_{step:08d}"
        tmp = self.directory / f".step_{step:08d}.tmp"
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        dcp.save(state, checkpoint_id=str(tmp))
        dist.barrier()
        if self.is_main:
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return final

    def clear(self) -> None:
        """Delete every checkpoint of the run (a fresh start with `train.resume=never`)."""
        if self.is_main and self.directory.is_dir():
            shutil.rmtree(self.directory)
        dist.barrier()


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / "meta.json").read_text())


def saved_keys(path: Path) -> set[str]:
    """Flattened keys (`a.b.c`) of everything stored in a DCP checkpoint."""
    return set(FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def load_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Load in place into `state` (built with the same structure as when it was saved)."""
    dcp.load(state, checkpoint_id=str(path))
