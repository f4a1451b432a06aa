"""The run folder `<train.output_dir>/<run name>`: its default name, what identifies a run (the config keys
that change what is trained), the lock that keeps one job writing it, and the fresh start that moves an
old run aside.

A run is identified by its config less the keys that do not change what it computes (`RUN_INDEPENDENT`,
and `logging`). The default name hashes that identity, plus the world size when it is above 1 (it sets
the global batch and so the steps), so the same command finds its run again and another command, or the
same config at another world size, gets a run of its own. A run named explicitly (`train.run_name`) keeps
its name whatever the config: resuming it checks the checkpoint's config against the current one
(`config_changes`).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from ..config import Config, flat, non_default, to_dict
from ..errors import InputError

# train.* keys that do not change what a run computes: a job re-launched with other values of these keeps
# its run (and its checkpoints)
RUN_INDEPENDENT = (
    "output_dir", "run_name", "resume", "fault_at_step", "fault_rank", "fault", "progress_bar", "log_every",
    "checkpoint_every", "checkpoint_every_minutes", "keep_checkpoints", "runs_table", "metrics_window",
    "allow_config_change", "test_bootstrap", "profile_steps", "profile_after",
)
LOCK_FILE = "lock"


class RunInUse(InputError):
    """The run folder cannot be used: another job holds its lock, or the run's outputs cannot be written."""


def identity(values: dict[str, Any]) -> dict[str, Any]:
    """A config (as a dict) less `logging` and the train keys of RUN_INDEPENDENT."""
    values = {k: v for k, v in values.items() if k != "logging"}
    if "train" in values:
        values["train"] = {k: v for k, v in values["train"].items() if k not in RUN_INDEPENDENT}
    return values


def default_run_name(cfg: Config, world_size: int = 1) -> str:
    """`<model>-<hash>` of the config's non-default identity keys (and the world size when above 1). Fields
    holding their default do not enter the hash, so a later version that adds a config field (with a default)
    still finds the runs of an earlier one."""
    values = identity(non_default(cfg))
    if world_size > 1:
        values["world_size"] = world_size
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg.model.name}-{digest}"


def config_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """The identity keys whose value in `cfg` differs from the saved config (a checkpoint's `meta.json`), as
    'key: saved -> now'. A key the saved config lacks (a field added since) counts only when set to a
    non-default value; a key `cfg` lacks (a field removed since) is not compared."""
    normalise = lambda v: json.loads(json.dumps(v, default=str))  # as stored: tuples are lists
    now = flat(identity(normalise(to_dict(cfg))))
    set_now = flat(identity(normalise(non_default(cfg))))
    before = flat(identity(saved))
    changes = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in sorted(now) if k in before and before[k] != now[k]]
    changes += [f"{k}: (absent) -> {set_now[k]!r}" for k in sorted(set_now) if k not in before]
    return changes


class RunLock:
    """An exclusive POSIX lock on `<run>/lock` (fcntl, which NFS and Lustre honour), held for the life of the
    process; the file names the holder. Released by the kernel when the process exits, however it exits."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock; returns None, or why it could not be taken (the holder, as its file names it).
        A file system without locks is not an error: the run goes on unlocked (returns None)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EAGAIN):
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "an unnamed process"
                os.close(fd)
                return holder
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None
            raise
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        self.fd = fd  # kept open: closing any descriptor of the file would drop a POSIX lock
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None


def move_aside(run_dir: Path) -> Path | None:
    """Move everything of a run folder but its lock into `<run>.replaced-<time>` (a fresh start that loses
    nothing); returns that folder, or None when there was nothing to move."""
    run_dir = Path(run_dir)
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.is_dir() else []
    if not entries:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{n}")
    target.mkdir()
    for entry in entries:
        shutil.move(str(entry), str(target / entry.name))
    return target
