"""Which code made a result: the git commit of this checkout and whether its code had uncommitted changes
(recorded in every results line: the trainer's runs table, and so every sweep and benchmark line built on it),
and whether the code changed since a line's commit (a sweep lists such lines as stale and re-runs them on
request, `longer-sweep --rerun-stale`).

"Code" is what computes the numbers of a line: the package, the kernels and the pinned dependencies
(CODE_PATHS), without the modules that only run, label, write or summarise lines (the sweep runner, this module,
the run logger) or that training never runs (serving); and for a line made by a script outside the package (a
peer row, benchmarks/peer_fuxictr.py) that script too (the line's `code_paths`). Results, docs, tests and other
scripts are not code either, so committing a results file, a doc or a change to the runner does not make the
lines already made stale. The state is taken when a run starts (RunLogger is built before training), so a commit
made while it trains is not credited with it. Outside a git checkout (an installed package) nothing is known:
commit None.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CODE_PATHS = ("longer_train", "kernels", "pyproject.toml", ":(exclude)longer_train/sweep",
              ":(exclude)longer_train/serve", ":(exclude)longer_train/provenance.py",
              ":(exclude)longer_train/components/run_logger.py")  # git pathspecs


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None


def code_state(extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """{"commit": the checkout's HEAD (None outside a git checkout), "dirty": whether CODE_PATHS and the `extra`
    paths hold uncommitted changes, untracked files included (None when unknown)}, and the extra paths as
    "code_paths" when given."""
    head = _git("rev-parse", "HEAD")
    paths = {"code_paths": list(extra)} if extra else {}
    if head is None or head.returncode != 0:
        return {"commit": None, "dirty": None, **paths}
    status = _git("status", "--porcelain", "--", *CODE_PATHS, *extra)
    return {"commit": head.stdout.strip(), "dirty": None if status is None else bool(status.stdout.strip()), **paths}


@functools.lru_cache(maxsize=None)
def code_changed_since(commit: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether the code of the working tree (CODE_PATHS and the `extra` paths) differs from the code at `commit`
    (True where git cannot tell, e.g. a commit this checkout does not have)."""
    diff = _git("diff", "--quiet", commit, "--", *CODE_PATHS, *extra)
    return diff is None or diff.returncode != 0


def stale_reason(line: dict[str, Any]) -> str | None:
    """Why a results line may not be what the current code computes, or None: no commit recorded, made from
    uncommitted code, or made by a commit whose code differs from this tree's."""
    commit = line.get("commit")
    if not commit:
        return "no commit recorded"
    if line.get("dirty") is not False:
        return f"made at {commit[:7]} with uncommitted code changes"
    if code_changed_since(commit, tuple(line.get("code_paths", ()))):
        return f"made at {commit[:7]}, whose code differs from this tree's"
    return None
