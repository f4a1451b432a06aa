"""Checkpoint directory handling: only complete checkpoints count, a save interrupted before its rename is
ignored (the previous checkpoint stays the latest), the latest k are kept."""

import pytest
import torch

from longer_train.components.checkpoint import CheckpointManager, load_checkpoint, read_meta
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
