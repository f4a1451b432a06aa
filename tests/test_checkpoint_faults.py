"""Damaged checkpoints are never used silently. A run's latest checkpoint truncated, deleted in part or
altered (bytes flipped in weights or in optimizer state): resuming falls back to the previous checkpoint
and says why; when none verifies the run stops with one clear error; `longer-serve` and export refuse a
damaged checkpoint (or, given the run, take the newest that verifies)."""

import logging
import shutil
from pathlib import Path

import pytest
from test_config import QUICKSTART
from torch.distributed.checkpoint import FileSystemReader

from longer_train.components.checkpoint import CheckpointError
from longer_train.config import load_config
from longer_train.data import synthetic
from longer_train.distributed.process_group import destroy_distributed
from longer_train.serve.cli import main as serve_main
from longer_train.train import main as train_main
from longer_train.trainer import Trainer

STEP2, STEP4 = "step_00000002", "step_00000004"


def _overrides(data: Path, out: Path) -> list[str]:
    return [
        f"data.root={data}", "data.max_len=64", "data.batch_size=64", "data.num_workers=0", "train.max_steps=4",
        "train.checkpoint_every=2", "train.keep_checkpoints=3", f"train.output_dir={out}", "train.run_name=run",
        f"train.runs_table={out}/runs.jsonl", "train.progress_bar=false", "logging.wandb_mode=disabled",
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(data, output dir) of a finished 4-step run with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("faults")
    synthetic.generate(root / "data", users=300, max_len=64, seed=1)
    try:
        Trainer(load_config(QUICKSTART, _overrides(root / "data", root / "runs"))).train()
    finally:
        destroy_distributed()
    assert sorted(p.name for p in (root / "runs" / "run" / "checkpoints").iterdir()) == [STEP2, STEP4]
    return root / "data", root / "runs"


def _copy(finished, tmp_path) -> Path:
    out = tmp_path / "runs"
    shutil.copytree(finished[1], out)
    return out


def _region(checkpoint: Path, fqn: str) -> tuple[Path, int, int]:
    """(file, offset, length) where DCP stored the tensor `fqn`."""
    for index, info in FileSystemReader(str(checkpoint)).read_metadata().storage_data.items():
        if index.fqn == fqn:
            return checkpoint / info.relative_path, info.offset, info.length
    raise KeyError(fqn)


def _flip(checkpoint: Path, fqn: str, size: int) -> None:
    """Invert `size` bytes in the middle of a stored tensor (its file keeps its size)."""
    file, offset, length = _region(checkpoint, fqn)
    size = min(size, length // 2)
    data = bytearray(file.read_bytes())
    start = offset + (length - size) // 2
    data[start:start + size] = bytes(b ^ 0xFF for b in data[start:start + size])
    file.write_bytes(bytes(data))


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


CORRUPTIONS = {
    "truncated .distcp": lambda c: _truncate(c / "__0_0.distcp"),
    "truncated .metadata": lambda c: _truncate(c / ".metadata"),
    "truncated meta.json": lambda c: _truncate(c / "meta.json"),
    "deleted data file": lambda c: (c / "__0_0.distcp").unlink(),
    "256 bytes flipped in weights": lambda c: _flip(c, "model.dense.head.net.0.weight", 256),
    "4 KiB flipped in optimizer state": lambda c: _flip(
        c, "optimizer.state.dense.dense.head.net.0.weight.exp_avg", 4096),
}
REASONS = {
    "truncated .distcp": "__0_0.distcp has", "truncated .metadata": ".metadata has",
    "truncated meta.json": "meta.json has", "deleted data file": "__0_0.distcp is missing",
    "256 bytes flipped in weights": "__0_0.distcp does not match its SHA-256",
    "4 KiB flipped in optimizer state": "__0_0.distcp does not match its SHA-256",
}


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_resume_falls_back_past_a_damaged_latest_checkpoint(finished, tmp_path, caplog, damage):
    out = _copy(finished, tmp_path)
    CORRUPTIONS[damage](out / "run" / "checkpoints" / STEP4)
    caplog.set_level(logging.WARNING, logger="longer_train")
    try:
        trainer = Trainer(load_config(QUICKSTART, _overrides(finished[0], out)))
    finally:
        destroy_distributed()
    assert trainer.resumed_from == out / "run" / "checkpoints" / STEP2 and trainer.step == 2
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and STEP4 in skipped[0] and REASONS[damage] in skipped[0], skipped


def test_fallback_run_finishes_and_replaces_the_damaged_checkpoint(finished, tmp_path, caplog):
    out = _copy(finished, tmp_path)
    CORRUPTIONS["256 bytes flipped in weights"](out / "run" / "checkpoints" / STEP4)
    cfg = load_config(QUICKSTART, _overrides(finished[0], out))
    try:
        summary = Trainer(cfg).train()
        again = Trainer(cfg)  # the re-saved step 4 verifies: a rerun resumes from it
    finally:
        destroy_distributed()
    assert summary["steps"] == 4 and again.resumed_from.name == STEP4
    assert sorted(p.name for p in (out / "run" / "checkpoints").iterdir()) == [STEP2, STEP4]


def test_no_usable_checkpoint_is_one_clear_error(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    CORRUPTIONS["truncated .distcp"](out / "run" / "checkpoints" / STEP4)
    CORRUPTIONS["truncated meta.json"](out / "run" / "checkpoints" / STEP2)
    cfg = load_config(QUICKSTART, _overrides(finished[0], out))
    expected = rf"no checkpoint of .* is usable \({STEP4}: .*; {STEP2}: .*train.resume=never"
    with pytest.raises(CheckpointError, match=expected):
        try:
            Trainer(cfg)
        finally:
            destroy_distributed()
    # the command line: the same as one line on stderr, exit code 2, no traceback
    assert train_main([str(QUICKSTART), *_overrides(finished[0], out)]) == 2
    err = capsys.readouterr().err
    assert "longer-train: error: no checkpoint of" in err and "Traceback" not in err


def _score(checkpoint: Path, data: Path, tmp_path: Path) -> list[str]:
    """Score the test split (a sequence store's: histories from events/ beside it)."""
    out = tmp_path / "s.parquet"
    return ["score", "--checkpoint", str(checkpoint), "--requests", str(data / "test"), "--out", str(out)]


def test_serving_refuses_a_checkpoint_with_flipped_weights(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    checkpoint = out / "run" / "checkpoints" / STEP4
    CORRUPTIONS["256 bytes flipped in weights"](checkpoint)
    assert serve_main(_score(checkpoint, finished[0], tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"{checkpoint}: __0_0.distcp does not match its SHA-256" in err and "Traceback" not in err
    assert not (tmp_path / "s.parquet").exists()
    assert serve_main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "export")]) == 2
    assert "does not match its SHA-256" in capsys.readouterr().err and not (tmp_path / "export").exists()
    # given the run instead of one checkpoint, serving takes the newest that verifies and says so
    assert serve_main(_score(out / "run", finished[0], tmp_path)) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {checkpoint} skipped" in err and (tmp_path / "s.parquet").exists()
