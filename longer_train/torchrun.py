"""`python -m longer_train.torchrun [torchrun options] -m longer_train.train CONFIG ...`: torchrun
(`torch.distributed.run`, unchanged: same options, same agent, same restarts) as launch/torchrun.sh runs it,
with a quiet end instead of a Python traceback:

- the launcher itself gets SIGTERM or SIGINT (Slurm, Ctrl-C, `kill`): torchrun forwards it to the workers,
  which finish their step, write a checkpoint and print one line (components/preemption.py); then this exits
  with 128 + the signal number;
- a worker fails (no restarts left): torchrun's failure summary (each failed rank, its exit code and its
  one-line error) is printed, and this exits with the first failed rank's exit code (2 for bad input, 75 for
  a run stopped with a checkpoint, ...).
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from .components.run_logger import drop_log_messages

# torchrun's lines about forwarding a stop signal: the workers' own line says what happened
_FORWARDING = {
    "torch.distributed.elastic.agent.server.api": r"^Received \d+ death signal, shutting down workers",
    "torch.distributed.elastic.multiprocessing.api": r"^Sending process \d+ closing signal",
}


def main(argv: list[str] | None = None) -> int:
    drop_log_messages(_FORWARDING)
    try:
        torchrun_main(argv)
    except SignalException as stop:
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        print(failed.format_msg(), file=sys.stderr, flush=True)
        _, first = failed.get_first_failure()
        code = first.exitcode
        return code if 0 < code < 256 else 128 - code if code < 0 else 1  # a negative code: killed by -code
    return 0


if __name__ == "__main__":
    sys.exit(main())
