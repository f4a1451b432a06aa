"""What the command-line tools do with an error: bad input (a config key, a data file, a checkpoint, a
request; `InputError` and its subclasses, and OS errors such as a missing or unwritable path) is printed as
one line naming what is wrong, with a non-zero exit; anything else is a bug and keeps its traceback.
`--debug` or `LONGER_DEBUG=1` shows the traceback of every error.

Under torchrun the line is also written to the rank's torchelastic error file, so the job's failure
summary (the "Root Cause" block) shows the message instead of `<N/A>` or a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

EXIT_INPUT_ERROR = 2  # bad input, as argparse's usage errors
# stopped by a signal with a checkpoint written (EX_TEMPFAIL): not 0, so torchrun restarts the workers and the
# Slurm script requeues the job; running the same command again resumes
EXIT_STOPPED = 75
EXIT_DIVERGED = 3  # the training loss became NaN or infinite


class InputError(ValueError):
    """Bad input from the user: printed by the CLIs as one line (no traceback unless debugging)."""


class NonFiniteScores(InputError):
    """A model gave NaN or infinite scores for inputs that passed their range checks (its weights are broken):
    one line, never a NaN written as a score (the batch CLI exits 2 and writes nothing; HTTP answers 500)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every console script's --help: the module docstring as written, each option's default shown (unless
    it is None, a flag's False, or the help text already says what the default is)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def add_debug_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--debug` on a CLI's parser; returns a parent parser that gives each sub-command the flag too (so it
    may come before or after the sub-command)."""
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error (also LONGER_DEBUG=1)")
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parent


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("LONGER_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def is_input_error(err: BaseException, also: tuple[type[BaseException], ...] = ()) -> bool:
    return isinstance(err, (InputError, OSError, *also))


def one_line(err: BaseException) -> str:
    """The error's message on one line. An error re-raised by a DataLoader worker carries the worker's
    traceback in its message ("Caught X in DataLoader worker process N. Original Traceback ... X: msg");
    only the original message is kept."""
    text = str(err)
    if "Original Traceback (most recent call last)" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        last = lines[-1] if lines else text
        for name in (f"{type(err).__module__}.{type(err).__qualname__}: ", f"{type(err).__name__}: "):
            if name in last:
                last = last.split(name, 1)[1]
                break
        text = last
    if isinstance(err, OSError) and not isinstance(err, InputError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"  # without the '[Errno N]' prefix
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(err).__name__


def _record_for_torchrun(line: str) -> None:
    """Under torchrun, `line` becomes this rank's entry in the job's failure summary."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        # a plain-string message: torchrun's summary prints it as it is (a dict would print a traceback)
        try:
            with open(error_file, "w") as f:
                json.dump({"message": line, "timestamp": int(time.time())}, f)
        except OSError:
            pass


def report(prog: str, err: BaseException) -> int:
    """Print `err` as one line on stderr (with the rank under torchrun), record it for torchrun's failure
    summary, and return the exit code."""
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    line = f"{prog}: error{f' (rank {rank})' if rank is not None else ''}: {one_line(err)}"
    print(line, file=sys.stderr, flush=True)
    _record_for_torchrun(line)
    return EXIT_INPUT_ERROR


def report_stopped(prog: str, message: str) -> int:
    """A run stopped on request: `message` once (rank 0) on stderr and in torchrun's summary; EXIT_STOPPED."""
    line = f"{prog}: {message}"
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)
    _record_for_torchrun(line)
    return EXIT_STOPPED


def run_cli(prog: str, fn: Callable[[], int], debug: bool = False,
            also: tuple[type[BaseException], ...] = ()) -> int:
    """Call `fn` and return its exit code; bad input (`is_input_error`, plus the classes in `also`) becomes
    a one-line message and exit code 2 unless debugging, when it propagates with its traceback."""
    if debug_enabled(debug):
        return fn()
    try:
        return fn()
    except Exception as err:
        if not is_input_error(err, also):
            raise
        return report(prog, err)
