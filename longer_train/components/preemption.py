"""Stopping cleanly when the job is told to: SIGTERM (torchrun's shutdown, Slurm's preemption or time limit,
`kill`) and SIGINT (Ctrl-C) only set a flag; the trainer finishes the step it is in, every rank agrees at the
step boundary, a checkpoint is written and the process exits with `EXIT_STOPPED`, a non-zero code that
torchrun restarts (`--max-restarts`) and that the Slurm script requeues. The same all-reduce carries rank 0's
"a checkpoint is due" (`train.checkpoint_every_minutes`), so every rank saves at the same step.

Under torchrun a worker also gets SIGTERM when its launcher dies (Linux's parent-death signal), so a `kill -9`
of the launcher stops the workers the same way instead of leaving them training as orphans.

A third SIGINT (a terminal sends one to every process, torchrun forwards another) aborts at once, without a
checkpoint, as SIGINT's default would. DataLoader workers ignore both signals (data/loader.py): their parent
ends them, and a worker killed by Ctrl-C or by Slurm's SIGTERM to every process would fail the step being finished.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_ABORT_AFTER = 3  # the SIGINT that aborts without a checkpoint


class StopRequests:
    """The stop signals received by this process, and the per-step agreement of all ranks on stopping and on
    saving. `install()` replaces the handlers of STOP_SIGNALS until `uninstall()`."""

    def __init__(self, checkpoint_every_minutes: float = 0.0) -> None:
        self.received: signal.Signals | None = None
        self.interrupts = 0
        self.interval_s = checkpoint_every_minutes * 60
        self.last_save = time.monotonic()
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if "TORCHELASTIC_RUN_ID" in os.environ:
            _stop_with_parent()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if sig == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= _ABORT_AFTER:
                signal.signal(sig, signal.SIG_DFL)
                os.kill(os.getpid(), sig)
        if self.received is None:
            self.received = sig

    def saved(self) -> None:
        """A checkpoint was just written: the time interval restarts."""
        self.last_save = time.monotonic()

    def poll(self, device: torch.device) -> tuple[bool, bool]:
        """(stop, save) agreed by all ranks (a collective: every rank calls it at the same step): stop when any
        rank received a stop signal, save when rank 0's interval has passed or the run stops."""
        due = self.interval_s > 0 and time.monotonic() - self.last_save >= self.interval_s
        flags = [self.received is not None, due]
        if dist.is_initialized() and dist.get_world_size() > 1:
            box = torch.tensor([int(flags[0]), int(flags[1] and dist.get_rank() == 0)], device=device)
            dist.all_reduce(box, op=dist.ReduceOp.MAX)
            flags = [bool(v) for v in box.tolist()]
        stop, due = flags
        return stop, due or stop



def _stop_with_parent() -> None:
    """Ask the kernel for SIGTERM when the launcher (this process's parent) dies; Linux only."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() == 1:  # the launcher died before the request
        os.kill(os.getpid(), signal.SIGTERM)
