"""Checkpoints with torch.distributed.checkpoint (DCP): sharded tables, dense weights, the fused sparse and
the dense optimizer state and per-rank RNG states; beside them `meta.json` with what is small and the same
on every rank (the trainer puts the LR schedule, step, data position and metric state there, with the
sharding plan and the resolved config), and `manifest.json`, written last, with the size and SHA-256 of
every other file.

Layout: `<run>/checkpoints/step_<N>/`. A save goes into a hidden `.step_<N>.tmp` directory that is renamed
only once every rank has written, `meta.json` is in place and the manifest is written, so a crash mid-save
leaves at most a temporary directory, which is ignored and replaced by the next save of that step. A save
of a step that already exists (re-running a finished run) moves the old copy to `.step_<N>.old` before the
new one is renamed in and deletes it after: at every moment one complete copy exists, and a `.step_<N>.old`
without a `step_<N>` is used as that step. Only the latest `keep` checkpoints are kept.

Every load verifies the files against the manifest first (training resume, `longer-serve`, export): a
truncated, missing or altered file is never used. Resuming falls back to the newest checkpoint that
verifies and loads, reporting each one it passes over; if none does, it is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

from ..errors import InputError, one_line

MANIFEST = "manifest.json"
_FORMAT = "longer-train checkpoint manifest 1"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_REPLACED_DIR = re.compile(r"^\.step_(\d{8})\.old$")  # the previous copy of a step while it is re-saved
_CHUNK = 8 << 20
log = logging.getLogger(__name__)


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete, fails verification against its manifest or cannot be loaded."""


class CheckpointRefused(CheckpointError):
    """A checkpoint that verifies but must not be resumed (another run's config): no fallback to an older one."""


# ----------------------------------------------------------------------------------------------------
# checksums
# ----------------------------------------------------------------------------------------------------
def file_digest(path: Path) -> dict[str, Any]:
    """{"bytes": size, "sha256": hex digest} of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """file name -> {"bytes", "sha256"} recorded at save; CheckpointError when there is no readable manifest."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (an incomplete save, or not a longer-train checkpoint)")
    try:
        manifest = json.loads(file.read_text())
        files = manifest["files"]
        if manifest.get("format") != _FORMAT or not all(
            isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str) for v in files.values()
        ):
            raise ValueError("unexpected content")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: unreadable manifest ({err})") from None
    return files


def _check_files(path: Path, manifest: dict[str, dict[str, Any]], names: list[str]) -> str | None:
    """The first problem of these files against the manifest, or None."""
    for name in names:
        file, want = Path(path) / name, manifest[name]
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != want["bytes"]:
            return f"{name} has {size} bytes, the manifest says {want['bytes']} (truncated or overwritten)"
        if file_digest(file)["sha256"] != want["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (the file was altered)"
    return None


def verify_checkpoint(path: Path) -> None:
    """Check every file of a checkpoint against its manifest (one process); CheckpointError if one fails."""
    manifest = read_manifest(path)
    problem = _check_files(Path(path), manifest, sorted(manifest))
    if problem:
        raise CheckpointError(f"{path}: {problem}")


# ----------------------------------------------------------------------------------------------------
# the checkpoints of a run
# ----------------------------------------------------------------------------------------------------
def _distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def _first_problem(problem: str | None) -> str | None:
    """The first rank's problem (by rank), the same on every rank; a collective under a process group."""
    if not _distributed():
        return problem
    problems: list = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return next((p for p in problems if p is not None), None)


def _broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (listings of a shared directory must agree)."""
    if not _distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(part: dict[str, Any]) -> dict[str, Any]:
    """The union of every rank's dict (a collective under a process group)."""
    if not _distributed():
        return part
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in p.items()}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name) or _REPLACED_DIR.match(path.name)
    return int(match.group(1))


def describe_failure(err: BaseException) -> str:
    """One line for an error of a checkpoint load or save: DCP's CheckpointException (a BaseException holding
    each failed rank's exception and traceback) as each rank's own error."""
    if isinstance(err, CheckpointException):
        return "; ".join(f"rank {rank}: {type(exc).__name__}: {one_line(exc)}"
                         for rank, (exc, _trace) in sorted(err.failures.items()))
    return f"{type(err).__name__}: {one_line(err)}"


def incomplete(directory: Path) -> list[Path]:
    """Entries named like a checkpoint (`step_<N>`) that are not one: a folder without a manifest (empty, copied
    in part, or written by something else) or a file. A save in progress is a hidden `.step_<N>.tmp`, not this."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _STEP_DIR.match(p.name) and not (p / MANIFEST).is_file())


def candidates(directory: Path) -> list[Path]:
    """The checkpoints of a run that finished writing (they hold a manifest), newest first; not verified.
    A `.step_N.old` counts when no `step_N` exists (a re-save of step N was interrupted)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = {p.name for p in directory.iterdir() if _STEP_DIR.match(p.name)}
    found = [
        p for p in directory.iterdir()
        if (p / MANIFEST).is_file()
        and (_STEP_DIR.match(p.name) or (_REPLACED_DIR.match(p.name) and p.name[1:-4] not in steps))
    ]
    return sorted(found, key=_step_of, reverse=True)


class CheckpointManager:
    def __init__(self, directory: Path, keep: int, is_main: bool) -> None:
        self.directory, self.keep, self.is_main = Path(directory), keep, is_main

    def complete(self) -> list[Path]:
        """Checkpoints that finished writing, oldest first (not verified: see `load_newest`)."""
        return candidates(self.directory)[::-1]

    def latest(self) -> Path | None:
        found = candidates(self.directory)
        return found[0] if found else None

    def path(self, step: int) -> Path:
        """Where the checkpoint of `step` is (or will be)."""
        return self.directory / f"step_{step:08d}"

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Save `state` (all ranks call this) as `step_<step>`; returns that path. A failure on any rank (a full
        disk, a lost mount, DCP's own errors) is a CheckpointError on every rank, naming the checkpoint and each
        failure; the half-written save is removed and the earlier checkpoints stay as they were."""
        final = self.path(step)
        tmp = self.directory / f".step_{step:08d}.tmp"
        old = self.directory / f".step_{step:08d}.old"

        def on_all_ranks(action: Callable[[], Any], main_only: bool = False) -> Any:
            """Run `action` (on rank 0 only if `main_only`); every rank raises if it failed on any."""
            result, problem = None, None
            if self.is_main or not main_only:
                try:
                    result = action()
                except (Exception, CheckpointException) as err:  # noqa: B036 -- DCP's is a BaseException
                    problem = describe_failure(err)
            problem = _first_problem(problem)
            if problem is not None:
                if self.is_main:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise CheckpointError(f"saving checkpoint {final} failed ({problem}); the earlier checkpoints of "
                                      f"{self.directory} are kept")
            return result

        def start() -> None:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)

        def publish(digests: dict[str, dict[str, Any]]) -> None:
            manifest = {"format": _FORMAT, "algorithm": "sha256", "files": digests}
            _write_durably(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
            _fsync(tmp)
            if final.exists():  # keep the complete previous copy until the new one is in place
                shutil.rmtree(old, ignore_errors=True)
                final.rename(old)
            tmp.rename(final)
            _fsync(self.directory)

        on_all_ranks(start, main_only=True)
        on_all_ranks(lambda: dcp.save(state, checkpoint_id=str(tmp)))
        on_all_ranks(lambda: _write_durably(tmp / "meta.json", json.dumps(meta, indent=2, default=str)),
                     main_only=True)
        # each rank hashes a share of the files rank 0 lists (the listings of a shared folder must agree)
        names = _broadcast(on_all_ranks(
            lambda: sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST), main_only=True))
        rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        mine = on_all_ranks(lambda: {name: file_digest(tmp / name) for name in names[rank::world]})
        digests = _gather(mine)
        on_all_ranks(lambda: publish(digests), main_only=True)
        if self.is_main:
            shutil.rmtree(old, ignore_errors=True)
            for stale in self.complete()[: -self.keep]:
                shutil.rmtree(stale, ignore_errors=True)
        if _distributed():
            dist.barrier()
        return final

    def verify(self, path: Path) -> str | None:
        """What is wrong with a checkpoint's files, or None; every rank checks a share of the files and all
        ranks get the same answer (all ranks call this)."""
        try:
            manifest = read_manifest(path)
        except CheckpointError as err:
            return _first_problem(str(err).removeprefix(f"{path}: "))
        rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        return _first_problem(_check_files(path, manifest, sorted(manifest)[rank::world]))

    def load_newest(self, load: Callable[[Path, dict[str, Any]], None], say: Callable[[str], None]) -> Path | None:
        """Load the newest checkpoint that verifies and loads (all ranks call this): `load(path, meta)` loads
        it into the live objects. Each checkpoint passed over is reported with `say`. Returns the path
        loaded, None when the run has no checkpoint, and raises CheckpointError when it has some but none
        is usable (a run must not silently start over)."""
        problems = []
        for path in _broadcast(incomplete(self.directory)):
            problem = f"not a complete checkpoint (a {'folder without ' + MANIFEST if path.is_dir() else 'file'})"
            say(f"checkpoint {path} skipped: {problem}")
            problems.append(f"{path.name}: {problem}")
        for path in _broadcast(candidates(self.directory)):
            problem = self.verify(path)
            if problem is None:
                try:
                    meta = read_meta(path)
                except CheckpointError as err:  # verified, so only a manifest written with it broken
                    problem = str(err).removeprefix(f"{path}/")  # "meta.json: unreadable (...)"
                problem = _first_problem(problem)
            if problem is None:
                try:
                    load(path, meta)  # the DCP load is collective and raises on every rank if one fails
                except CheckpointRefused:
                    raise
                except (Exception, CheckpointException) as err:  # noqa: B036 -- DCP's is a BaseException
                    problem = f"cannot be loaded ({describe_failure(err)})"
                problem = _first_problem(problem)
            if problem is None:
                return path
            say(f"checkpoint {path} skipped: {problem}")
            problems.append(f"{path.name}: {problem}")
        if problems:
            raise CheckpointError(
                f"no checkpoint of {self.directory} is usable ({'; '.join(problems)}); restore or delete them, "
                "or start over with train.resume=never"
            )
        return None


def find_checkpoint(path: str | Path, say: Callable[[str], None] | None = None) -> Path:
    """For serving and export (one process): `path` itself when it is a checkpoint, verified; else the newest
    checkpoint under it that verifies (`path` a run directory or its `checkpoints/` folder), reporting those
    passed over with `say`. CheckpointError when there is none."""
    path, say = Path(path), say or log.warning
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint, run or checkpoints folder")
    if (path / MANIFEST).exists() or (path / ".metadata").exists() or (path / "meta.json").exists():
        verify_checkpoint(path)
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    for entry in incomplete(folder):
        say(f"checkpoint {entry} skipped: not a complete checkpoint "
            f"(a {'folder without ' + MANIFEST if entry.is_dir() else 'file'})")
    found = candidates(folder)
    if not found:
        raise CheckpointError(f"{path}: not a checkpoint, and holds no complete checkpoint (step_N/{MANIFEST})")
    for candidate in found:
        try:
            verify_checkpoint(candidate)
            return candidate
        except CheckpointError as err:
            say(f"checkpoint {candidate} skipped: {str(err).removeprefix(f'{candidate}: ')}")
    raise CheckpointError(f"{path}: none of its {len(found)} checkpoint(s) verifies against its manifest")


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json; CheckpointError when it is missing or not a JSON object."""
    file = Path(path) / "meta.json"
    try:
        meta = json.loads(file.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except (OSError, ValueError) as err:  # ValueError: bad JSON, bad UTF-8
        raise CheckpointError(f"{file}: unreadable ({one_line(err)})") from None
    return meta


def saved_keys(path: Path) -> set[str]:
    """Flattened keys (`a.b.c`) of everything stored in a DCP checkpoint."""
    return set(FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def load_checkpoint(path: Path, state: dict[str, Any], verify: bool = True) -> None:
    """Load in place into `state` (built with the same structure as when it was saved), after checking the
    files against the manifest (`verify=False` when the caller has just verified them)."""
    if verify:
        verify_checkpoint(path)
    dcp.load(state, checkpoint_id=str(path))
