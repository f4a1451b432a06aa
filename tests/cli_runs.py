"""The command line of a tiny in-process training run, shared by the tests that call `longer-train`'s main."""

from pathlib import Path

from test_config import QUICKSTART


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """`longer-train` arguments: the quickstart on `data` (64-event histories), 3 steps, outputs under `out`,
    no W&B, no progress bar; `extra` overrides come last."""
    return [
        str(QUICKSTART), f"data.root={data}", "data.max_len=64", "data.batch_size=64", "train.max_steps=3",
        "train.log_every=1", f"train.output_dir={out}/runs", f"train.runs_table={out}/runs.jsonl",
        "train.progress_bar=false", "logging.wandb_mode=disabled", *extra,
    ]
