"""One place that reports a run: console lines and a progress bar, Weights & Biases (offline unless the
config says otherwise), `<run>/metrics.jsonl` (every logged metric, by step), and the runs table (one JSON
line per finished run). Only rank 0 writes.

`setup_logging` configures Python logging for the command-line tools: warnings and errors on stderr from
rank 0 (every rank with `logging.all_ranks: true`; errors from every rank always), Python warnings
routed through it, and only a short, named list of third-party messages a user cannot act on dropped."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import Config
from ..errors import InputError, one_line
from ..provenance import code_state

# Messages from TorchRec / PyTorch printed on every run about their own internals (nothing a user of this
# project can change); each is dropped by its exact text, so every other warning still shows.
_NOISE_LOGS = {
    "torchrec.distributed.planner.types": r"The topology was constructed directly rather than via TopologyFactory",
    "torchrec.distributed.planner.storage_reservations": r"There is a known issue with TorchRec's dense tensor size",
    "torch.fx._symbolic_trace": r"is_fx_tracing will return true for both fx.symbolic_trace and torch.export",
}
_NOISE_WARNINGS = (  # (category, message regex)
    (FutureWarning, r"HeuristicalStorageReservation is known to cause issues"),
    (FutureWarning, r"`broadcast_buffers` is deprecated"),
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),
    (UserWarning, r"torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to load"),
)


class _DropMessage(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def drop_log_messages(patterns: dict[str, str]) -> None:
    """Drop the messages of each named logger that match its regex (added once, however often called)."""
    for name, pattern in patterns.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (not the one at setup)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(all_ranks: bool = False, debug: bool = False) -> None:
    """Console logging for a command-line tool. Under torchrun (RANK set) rank 0 logs warnings and above
    and the other ranks only errors unless `all_ranks`; lines carry the rank when there is more than one.
    `debug` logs longer_train's debug messages too."""
    rank = int(os.environ.get("RANK", "0"))
    many = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handler = _StderrHandler()
    prefix = f"[rank {rank}] " if many else ""
    handler.setFormatter(logging.Formatter(prefix + "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_longer_train", False)]:
        root.removeHandler(old)
    handler._longer_train = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING if rank == 0 or all_ranks else logging.ERROR)
    logging.getLogger("longer_train").setLevel(
        logging.DEBUG if debug else logging.INFO if rank == 0 or all_ranks else logging.ERROR
    )
    drop_log_messages(_NOISE_LOGS)
    for category, pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    logging.captureWarnings(True)  # the rest go through logging: shown once per place, rank-filtered


class RunLogger:
    """Rank 0's reports of a run (`enabled` on rank 0 only). The W&B run starts when training does (`open`),
    not for a run that had finished; its id is kept in `<run>/wandb_run_id`, so a resumed or restarted run
    continues the same W&B run (offline runs of one id are synced into one by `wandb sync`)."""

    WANDB_ID_FILE = "wandb_run_id"

    def __init__(self, cfg: Config, run_dir: Path, resolved: dict[str, Any], enabled: bool) -> None:
        self.cfg, self.run_dir, self.resolved, self.enabled = cfg, run_dir, resolved, enabled
        self.code = code_state() if enabled else {}  # the code this run trains with, taken before it trains
        self.bar: tqdm | None = None
        self.wandb = None
        self.tensorboard = None

    def open(self) -> None:
        """Start (or resume) the run's W&B run, and its TensorBoard writer when `logging.tensorboard`."""
        if self.enabled and self.cfg.logging.tensorboard and self.tensorboard is None:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily, as wandb

            # a resumed run adds an event file beside the earlier ones; TensorBoard joins them by step
            self.tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
            self.tensorboard.add_text("config", "```\n" + json.dumps(self.resolved, indent=2) + "\n```")
        if not self.enabled or self.cfg.logging.wandb_mode == "disabled" or self.wandb is not None:
            return
        import wandb  # imported lazily: slow to import and not needed when disabled

        os.environ.setdefault("WANDB_SILENT", "true")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.run_dir / self.WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        try:
            self.wandb = wandb.init(
                project=self.cfg.logging.wandb_project, group=self.cfg.logging.wandb_group, name=self.run_dir.name,
                dir=str(self.run_dir), mode=self.cfg.logging.wandb_mode, config=self.resolved, id=run_id,
                resume="allow" if run_id else None,
            )
        except (wandb.Error, ValueError) as err:  # no login for online mode, a bad WANDB_* setting, ...
            raise InputError(
                f"logging.wandb_mode={self.cfg.logging.wandb_mode}: W&B did not start ({one_line(err)}); log in "
                "(`wandb login` or WANDB_API_KEY), or use logging.wandb_mode=offline (`wandb sync` later)"
            ) from None
        if run_id is None:
            id_file.write_text(self.wandb.id + "\n")

    def start_progress(self, total: int, initial: int = 0) -> None:
        """A progress bar on a terminal only: in a log file its redraws would be lines of their own."""
        if self.enabled and self.cfg.train.progress_bar and sys.stderr.isatty():
            self.bar = tqdm(
                total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, leave=False
            )

    def advance(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """To `<run>/metrics.jsonl` (a resumed run appends; the last line of a step wins), W&B and TensorBoard."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}  # a list stays in the file
        if self.wandb is not None:
            self.wandb.log(numbers, step=step)
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, global_step=step)

    def close(self, stopped: bool = False) -> None:
        """Close the progress bar, TensorBoard and the W&B run; `stopped`: the run will be resumed (W&B marks it
        preempted)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            if stopped:
                self.wandb.mark_preempting()
            self.wandb.finish()
            self.wandb = None

    def finish(self, summary: dict[str, Any]) -> None:
        """The run finished: its summary to W&B, close, and append its results line to the runs table."""
        if not self.enabled:
            return
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        self.close()
        self.record(summary)

    def record(self, summary: dict[str, Any]) -> bool:
        """Append the run's results line to the runs table unless the table has it already (the same run and
        checkpoint: a finished run run again), with what made it: the code's commit and whether it had
        uncommitted changes when the run started (provenance.py), and the resolved config; returns whether it
        was appended."""
        if not self.enabled:
            return False
        table = Path(self.cfg.train.runs_table)
        if table.is_file():
            for line in table.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and (row.get("run"), row.get("checkpoint")) == (
                        summary.get("run"), summary.get("checkpoint")):
                    return False
        table.parent.mkdir(parents=True, exist_ok=True)
        with table.open("a") as f:
            line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary, **self.code, "config": self.resolved}
            f.write(json.dumps(line) + "\n")
        return True
