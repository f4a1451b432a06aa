"""Damaged checkpoints are never used silently. A run's latest checkpoint truncated, deleted in part or
altered (bytes flipped in weights or in optimizer state), or garbage under a manifest rewritten to match it:
resuming falls back to the previous checkpoint and says why; when none verifies the run stops with one clear
error and overwrites nothing; an entry named like a checkpoint that is none is reported; a failed save is one
line and leaves the earlier checkpoints; `longer-serve` and export refuse a damaged checkpoint (or, given the
run, take the newest that verifies)."""

import json
import logging
import shutil
from pathlib import Path

import pytest
from test_config import QUICKSTART
from torch.distributed.checkpoint import FileSystemReader

from longer_train.components.checkpoint import CheckpointError, file_digest
from longer_train.config import load_config
from longer_train.datasets import synthetic
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


def _resume(finished, out: Path, caplog) -> tuple[Trainer, list[str]]:
    """A trainer built on the run in `out` (it resumes), and the checkpoints it reported skipping."""
    caplog.set_level(logging.WARNING, logger="longer_train")
    try:
        trainer = Trainer(load_config(QUICKSTART, _overrides(finished[0], out)))
    finally:
        destroy_distributed()
    return trainer, [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]


@pytest.mark.parametrize("damage", list(CORRUPTIONS))
def test_resume_falls_back_past_a_damaged_latest_checkpoint(finished, tmp_path, caplog, damage):
    out = _copy(finished, tmp_path)
    CORRUPTIONS[damage](out / "run" / "checkpoints" / STEP4)
    trainer, skipped = _resume(finished, out, caplog)
    assert trainer.resumed_from == out / "run" / "checkpoints" / STEP2 and trainer.step == 2
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


def _reseal(checkpoint: Path) -> None:
    """Rewrite the manifest so that it matches the files as they now are (a self-consistent garbage checkpoint)."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"] = {name: file_digest(checkpoint / name) for name in manifest["files"]}
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def test_garbage_with_a_matching_manifest_falls_back_in_training_and_is_refused_in_serving(finished, tmp_path,
                                                                                           caplog, capsys):
    """DCP's load error is a BaseException (CheckpointException): it still goes through the fallback."""
    out = _copy(finished, tmp_path)
    checkpoint = out / "run" / "checkpoints" / STEP4
    (checkpoint / "__0_0.distcp").write_bytes(b"\x00garbage" * 1000)
    (checkpoint / "meta.json").write_bytes(b"\xff\xfe not json")
    _reseal(checkpoint)
    trainer, skipped = _resume(finished, out, caplog)
    assert trainer.resumed_from.name == STEP2
    assert len(skipped) == 1 and f"{STEP4} skipped: " in skipped[0] and "meta.json" in skipped[0], skipped
    (checkpoint / "meta.json").write_text((out / "run" / "checkpoints" / STEP2 / "meta.json").read_text())
    _reseal(checkpoint)  # now only the tensors are garbage: the DCP load itself fails
    for command in (_score(checkpoint, finished[0], tmp_path), ["export", "--checkpoint", str(checkpoint),
                                                                 "--out", str(tmp_path / "export")]):
        capsys.readouterr()
        assert serve_main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot be loaded" in err and "Traceback" not in err, err


@pytest.mark.parametrize("kind", ["folder without manifest", "empty folder", "file"])
def test_a_step_entry_that_is_no_checkpoint_is_reported_in_one_line(finished, tmp_path, caplog, capsys, kind):
    out = _copy(finished, tmp_path)
    entry = out / "run" / "checkpoints" / "step_00000006"
    if kind == "file":
        entry.write_text("not a checkpoint")
    elif kind == "empty folder":
        entry.mkdir()
    else:
        shutil.copytree(out / "run" / "checkpoints" / STEP4, entry)
        (entry / "manifest.json").unlink()
    trainer, skipped = _resume(finished, out, caplog)
    assert trainer.resumed_from.name == STEP4
    assert skipped == [f"checkpoint {entry} skipped: not a complete checkpoint "
                       f"(a {'file' if kind == 'file' else 'folder without manifest.json'})"]
    capsys.readouterr()
    assert serve_main(_score(out / "run", finished[0], tmp_path)) == 0  # serving a run folder says so too
    assert f"checkpoint {entry} skipped: not a complete checkpoint" in capsys.readouterr().err


def test_checkpoints_without_manifests_are_not_overwritten_by_a_fresh_start(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    for step in (STEP2, STEP4):
        (out / "run" / "checkpoints" / step / "manifest.json").unlink()
    before = {p: p.read_bytes() for p in (out / "run" / "checkpoints").rglob("*") if p.is_file()}
    assert train_main([str(QUICKSTART), *_overrides(finished[0], out)]) == 2
    err = capsys.readouterr().err
    assert "longer-train: error: no checkpoint of" in err and "not a complete checkpoint" in err
    assert "train.resume=never" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in (out / "run" / "checkpoints").rglob("*") if p.is_file()} == before


def test_a_failed_save_is_one_line_and_keeps_the_earlier_checkpoints(finished, tmp_path, monkeypatch, capsys):
    """ENOSPC inside DCP's save arrives as its CheckpointException (a BaseException) naming the rank's OSError."""
    out = _copy(finished, tmp_path)
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    def full_disk(*args, **kwargs):
        try:
            raise OSError(28, "No space left on device", str(out / "run" / "checkpoints" / ".step_00000006.tmp"))
        except OSError as err:
            raise CheckpointException("save failed", {0: _wrap_exception(err)}) from None

    monkeypatch.setattr("longer_train.components.checkpoint.dcp.save", full_disk)
    args = [str(QUICKSTART), *_overrides(finished[0], out), "train.max_steps=6", "train.allow_config_change=true"]
    assert train_main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("longer-train: error")]
    assert len(err) == 1 and "saving checkpoint" in err[0] and "step_00000006 failed" in err[0], err
    assert "No space left on device" in err[0] and ".step_00000006.tmp" in err[0]
    assert sorted(p.name for p in (out / "run" / "checkpoints").iterdir()) == [STEP2, STEP4]  # nothing left behind
