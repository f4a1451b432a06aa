"""One place that reports a run: console lines and a progress bar, Weights & Biases (offline unless the
config says otherwise), `<run>/metrics.jsonl` (every logged metric, by step), and the runs table (one JSON
line per finished run). Only rank 0 writes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import Config


class RunLogger:
    def __init__(self, cfg: Config, run_dir: Path, resolved: dict[str, Any], enabled: bool) -> None:
        self.cfg, self.run_dir, self.enabled = cfg, run_dir, enabled
        self.bar: tqdm | None = None
        self.wandb = None
        if enabled and cfg.logging.wandb_mode != "disabled":
            import wandb  # imported lazily: slow to import and not needed when disabled

            os.environ.setdefault("WANDB_SILENT", "true")
            run_dir.mkdir(parents=True, exist_ok=True)
            self.wandb = wandb.init(
                project=cfg.logging.wandb_project, group=cfg.logging.wandb_group, name=run_dir.name, dir=str(run_dir),
                mode=cfg.logging.wandb_mode, config=resolved,
            )

    def start_progress(self, total: int, initial: int = 0) -> None:
        if self.enabled and self.cfg.train.progress_bar:
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
        """To W&B and to `<run>/metrics.jsonl` (a resumed run appends; the last line of a step wins)."""
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the progress bar and W&B, and append the run's results line to the runs table."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
            self.wandb.finish()
        table = Path(self.cfg.train.runs_table)
        table.parent.mkdir(parents=True, exist_ok=True)
        with table.open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **summary}) + "\n")
