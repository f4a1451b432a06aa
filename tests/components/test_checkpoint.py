"""Checkpoint directory handling: only complete checkpoints count, a save interrupted before its rename is
ignored (the previous checkpoint stays the latest), the latest k are kept, a re-save of a step never
leaves a moment without a complete copy, and a load checks the files against the manifest."""

from pathlib import Path

import pytest
import torch

from longer_train.components.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, read_meta
from longer_train.distributed.process_group import destroy_distributed, init_distributed


@pytest.fixture
def group():
    init_distributed("cpu")
    yield
    destroy_distributed()


def test_interrupted_save_is_ignored_and_latest_k_are_kept(group, tmp_path):
    manager = CheckpointManager(tmp_path, keep=2, is_main=True)
    assert manager.latest() is None
    for step in (1, 2, 3):
        manager.save(step, {"w": torch.full((3,), float(step))}, {"step": step})
    assert [p.name for p in manager.complete()] == ["step_00000002", "step_00000003"]

    # a crash mid-save: the temporary directory of step 4 has tensors but was never renamed, and a step
    # directory without meta.json (e.g. copied by hand, half-way) is not complete either
    (tmp_path / ".step_00000004.tmp").mkdir()
    (tmp_path / ".step_00000004.tmp" / "__0_0.distcp").write_bytes(b"partial")
    (tmp_path / "step_00000005").mkdir()
    latest = manager.latest()
    assert latest.name == "step_00000003" and read_meta(latest) == {"step": 3}
    state = {"w": torch.zeros(3)}
    load_checkpoint(latest, state)
    assert state["w"].tolist() == [3.0, 3.0, 3.0]

    manager.save(4, {"w": torch.full((3,), 4.0)}, {"step": 4})  # the next save of that step replaces it
    assert manager.latest().name == "step_00000004" and not (tmp_path / ".step_00000004.tmp").exists()


class Killed(BaseException):
    """Stands for SIGKILL at one moment of a save."""


def test_resaving_a_step_always_leaves_one_complete_checkpoint(group, tmp_path, monkeypatch):
    # keep=1: a finished run re-run saves its final step again; killed just before the new copy is renamed
    # in, the old copy must still be there (complete and verifying) for the next start
    manager = CheckpointManager(tmp_path, keep=1, is_main=True)
    manager.save(3, {"w": torch.full((3,), 3.0)}, {"step": 3})
    rename = Path.rename

    def killed_before_the_new_copy_is_in(self, target):
        if self.name == ".step_00000003.tmp":
            raise Killed()
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_the_new_copy_is_in)
    with pytest.raises(Killed):
        manager.save(3, {"w": torch.full((3,), 30.0)}, {"step": 3, "again": True})
    monkeypatch.setattr(Path, "rename", rename)

    latest = manager.latest()
    assert latest is not None and read_meta(latest) == {"step": 3}
    state = {"w": torch.zeros(3)}
    load_checkpoint(latest, state)  # verifies against the manifest, then loads
    assert state["w"].tolist() == [3.0, 3.0, 3.0]

    manager.save(3, {"w": torch.full((3,), 30.0)}, {"step": 3, "again": True})  # the next try completes
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000003"]
    assert read_meta(manager.latest()) == {"step": 3, "again": True}


def test_a_checkpoint_without_manifest_or_with_a_changed_file_is_not_loaded(group, tmp_path):
    manager = CheckpointManager(tmp_path, keep=3, is_main=True)
    path = manager.save(1, {"w": torch.arange(1000.0)}, {"step": 1})
    data = next(path.glob("*.distcp"))
    raw = bytearray(data.read_bytes())
    raw[-200] ^= 0x01  # one bit, the size unchanged
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"does not match its SHA-256"):
        load_checkpoint(path, {"w": torch.zeros(1000)})
    (path / "manifest.json").unlink()
    assert manager.latest() is None  # an unfinished save, or not ours
    with pytest.raises(CheckpointError, match=r"no manifest.json"):
        load_checkpoint(path, {"w": torch.zeros(1000)})
