"""What running a command again does to its run folder: a finished run says so and writes nothing; a config
changed under the same run name is refused in one line listing the changed keys (unless allowed);
another run's checkpoint placed as the newest is refused the same way; `train.resume=never` moves the old run
aside with a notice; a second job on a run folder in use is refused;
the default run name differs by world size."""

import json

import pytest
from cli_runs import train_args
from test_config import QUICKSTART

from longer_train.components.checkpoint import read_manifest
from longer_train.components.run_dir import RunLock, config_changes, default_run_name
from longer_train.config import load_config
from longer_train.train import main as train_main


def _args(data, out, *extra):
    return train_args(data, out, "train.run_name=r", "data.num_workers=0", *extra)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    assert train_main(_args(tiny, out)) == 0
    return out


def _snapshot(out):
    checkpoints = out / "runs" / "r" / "checkpoints"
    return {p.name: read_manifest(p) for p in checkpoints.iterdir()}, (out / "runs.jsonl").read_text()


def test_a_finished_run_run_again_says_so_and_writes_nothing(tiny, finished, capsys):
    before = _snapshot(finished)
    capsys.readouterr()
    assert train_main(_args(tiny, finished)) == 0
    out = capsys.readouterr().out
    assert "had finished at step 3: nothing to train" in out and "checkpoint:" not in out, out
    assert "test" in out and "auc" in out  # its results are printed again
    assert _snapshot(finished) == before  # no checkpoint re-written, no second runs-table line
    assert len(before[1].splitlines()) == 1


def test_a_changed_config_under_the_same_name_is_refused_in_one_line(tiny, finished, capsys):
    capsys.readouterr()
    for change, listed in (("optim.lr=0.003", "optim.lr: 0.002 -> 0.003"),
                           ("model.merge_k=4", "model.merge_k: 8 -> 4")):
        assert train_main(_args(tiny, finished, change)) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("longer-train")]
        assert len(lines) == 1 and listed in lines[0] and "train.allow_config_change=true" in lines[0], err
        assert "Traceback" not in err and "Size mismatch" not in err


def test_a_foreign_checkpoint_placed_as_the_newest_is_refused_and_nothing_is_written(tiny, finished, tmp_path,
                                                                                   capsys):
    """Another run's checkpoint (another seed and lr, the same shapes) copied into this run's folder as its newest:
    refused in one line listing the differing keys, not resumed; the folder is left as it was."""
    import shutil

    other = tmp_path / "other"
    assert train_main(train_args(tiny, other, "train.run_name=o", "data.num_workers=0", "train.seed=1",
                                 "optim.lr=0.003")) == 0
    shutil.copytree(finished / "runs", tmp_path / "runs")
    (tmp_path / "runs.jsonl").write_text((finished / "runs.jsonl").read_text())
    foreign = sorted((other / "runs" / "o" / "checkpoints").iterdir())[-1]
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    newest = max(int(p.name.split("_")[-1]) for p in checkpoints.iterdir())
    shutil.copytree(foreign, checkpoints / f"step_{newest + 5:08d}")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert train_main(_args(tiny, tmp_path)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("longer-train")]
    assert len(lines) == 1 and "optim.lr: 0.003 -> 0.002; train.seed: 1 -> 0" in lines[0], err
    assert f"step_{newest + 5:08d}" in lines[0] and "Traceback" not in err
    assert _snapshot(tmp_path) == before


def test_an_allowed_config_change_resumes_with_a_warning(tiny, finished, tmp_path, capsys):
    import shutil

    shutil.copytree(finished / "runs", tmp_path / "runs")
    (tmp_path / "runs.jsonl").write_text((finished / "runs.jsonl").read_text())
    capsys.readouterr()
    assert train_main(_args(tiny, tmp_path, "optim.lr=0.003", "train.max_steps=4",
                            "train.allow_config_change=true")) == 0
    out, err = capsys.readouterr()
    assert "resuming" in err and "under a changed config: optim.lr: 0.002 -> 0.003; train.max_steps: 3 -> 4" in err
    assert "resumed from" in out and "step      4/4" in out


def test_resume_never_moves_the_old_run_aside_with_a_notice(tiny, finished, tmp_path, capsys):
    import shutil

    shutil.copytree(finished / "runs", tmp_path / "runs")
    old = _snapshot(finished)[0]
    capsys.readouterr()
    assert train_main(_args(tiny, tmp_path, "train.resume=never")) == 0
    out = capsys.readouterr().out
    notice = [line for line in out.splitlines() if line.startswith("train.resume=never")]
    assert len(notice) == 1, out
    aside = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("r.replaced-")]
    assert len(aside) == 1 and str(aside[0]) in notice[0]
    assert {p.name: read_manifest(p) for p in (aside[0] / "checkpoints").iterdir()} == old  # nothing lost
    assert "resumed from" not in out and "step      1/3" in out  # trained from scratch


def test_a_run_folder_in_use_is_refused(tiny, tmp_path, capsys):
    lock = RunLock(tmp_path / "runs" / "r")
    assert lock.acquire() is None  # this test process holds it, as another job would
    capsys.readouterr()
    # POSIX locks are per process: the trainer in this process would get it too, so run it in another
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "longer_train.train", *_args(tiny, tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("longer-train")]
    assert len(lines) == 1 and "is being written by another job (pid" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_default_run_name_differs_by_world_size_only_above_one():
    cfg = load_config(QUICKSTART, ["data.root=data/synthetic"])
    one, two, four = (default_run_name(cfg, n) for n in (1, 2, 4))
    assert one == default_run_name(cfg) and len({one, two, four}) == 3


def test_config_changes_ignore_run_independent_keys_and_added_defaults():
    cfg = load_config(QUICKSTART, ["data.root=data/synthetic"])
    saved = json.loads(json.dumps(__import__("dataclasses").asdict(cfg)))
    assert config_changes(saved, cfg) == []
    for key in ("train.log_every=3", "train.checkpoint_every=7", "train.output_dir=elsewhere",
                "logging.wandb_mode=disabled", "train.resume=never"):
        assert config_changes(saved, load_config(QUICKSTART, ["data.root=data/synthetic", key])) == [], key
    del saved["model"]["length_chunks"]  # a field this checkpoint's version did not have
    assert config_changes(saved, cfg) == []  # ... at its default: no change
    changed = load_config(QUICKSTART, ["data.root=data/synthetic", "model.length_chunks=2"])
    assert config_changes(saved, changed) == ["model.length_chunks: (absent) -> 2"]
