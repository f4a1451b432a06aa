"""What a run leaves behind: an offline W&B run with the resolved config, one results line in the runs
table, and a checkpoint that loads back into a freshly built model."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_config import CONFIGS, QUICKSTART

from longer_train.components.checkpoint import load_checkpoint, read_meta
from longer_train.config import load_config
from longer_train.datasets import synthetic
from longer_train.distributed.process_group import destroy_distributed
from longer_train.trainer import Trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    synthetic.generate(root, users=300, max_len=64, seed=1)
    return root


def _local(value) -> torch.Tensor:
    """A plain tensor, or this rank's shard of a sharded embedding table."""
    return value.local_shards()[0].tensor if hasattr(value, "local_shards") else value


def _cfg(tiny, tmp_path, name, *extra):
    return load_config(QUICKSTART, [
        f"data.root={tiny}", "data.max_len=64", "data.batch_size=64", "train.max_steps=3", "train.log_every=1",
        f"train.output_dir={tmp_path}/runs", f"train.runs_table={tmp_path}/runs.jsonl", f"train.run_name={name}",
        "train.progress_bar=false", "data.num_workers=0", *extra,
    ])


def test_offline_wandb_runs_table_and_checkpoint_round_trip(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "first", "logging.wandb_mode=offline")
    try:
        trainer = Trainer(cfg)
        summary = trainer.train()
        saved = {k: _local(v).clone() for k, v in trainer.model.state_dict().items()}

        runs = [p for p in (tmp_path / "runs" / "first" / "wandb").iterdir() if p.name.startswith("offline-run")]
        assert len(runs) == 1 and any(runs[0].glob("*.wandb"))

        lines = (tmp_path / "runs.jsonl").read_text().splitlines()
        assert len(lines) == 1
        row = json.loads(lines[0])
        assert row["run"] == "first" and row["steps"] == 3 and 0.0 <= row["test_auc"] <= 1.0

        fresh = Trainer(_cfg(tiny, tmp_path, "second", "logging.wandb_mode=disabled", "train.seed=5"))
        state = {"model": fresh.model.state_dict()}
        before = state["model"]["dense.head.net.0.weight"].clone()
        load_checkpoint(summary["checkpoint"], state)
        loaded = fresh.model.state_dict()
        assert not torch.equal(before, loaded["dense.head.net.0.weight"])  # seed 5 initialised it differently
        assert any(key.startswith("sparse.") for key in saved)  # embedding tables are in the checkpoint
        for key, value in saved.items():
            torch.testing.assert_close(_local(loaded[key]), value, rtol=0, atol=0, msg=key)
        assert read_meta(summary["checkpoint"])["step"] == 3
    finally:
        destroy_distributed()


@pytest.mark.parametrize("name", ["no_sequence", "sum_pooling", "din"])
def test_baselines_train_through_the_same_trainer(tiny, tmp_path, name):
    try:
        summary = Trainer(_cfg(tiny, tmp_path, name, "logging.wandb_mode=disabled", f"model.name={name}")).train()
    finally:
        destroy_distributed()
    assert summary["model"] == name and summary["steps"] == 3 and 0.0 <= summary["test_auc"] <= 1.0
    assert summary["gflops_per_sample"] > 0


@pytest.mark.parametrize("name", ["twin", "hstu"])
def test_table1_experiment_configs_train_through_the_same_trainer(tiny, tmp_path, name):
    """`longer-train configs/datasets/synthetic.yaml configs/experiments/<name>.yaml`, on tiny data."""
    cfg = load_config([CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / f"{name}.yaml"], [
        f"data.root={tiny}", "data.max_len=64", "data.batch_size=64", "train.max_steps=3", "train.log_every=1",
        f"train.output_dir={tmp_path}/runs", f"train.runs_table={tmp_path}/runs.jsonl", f"train.run_name={name}",
        "train.progress_bar=false", "data.num_workers=0", "logging.wandb_mode=disabled",
    ])
    try:
        summary = Trainer(cfg).train()
    finally:
        destroy_distributed()
    assert summary["model"] == name and summary["steps"] == 3 and 0.0 <= summary["test_auc"] <= 1.0
    assert summary["gflops_per_sample"] > 0


def test_skipped_rows_are_reported_by_the_run(tiny, tmp_path, capsys):
    """data.bad_rows=skip: a bad training row does not stop the run, and its count is printed."""
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    part = sorted((data / "train").glob("*.parquet"))[0]
    table = pq.read_table(part)
    labels = table["label"].to_numpy().copy()
    labels[:5] = 0.5
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels)), part)
    cfg = _cfg(data, tmp_path, "skip", "logging.wandb_mode=disabled", "data.bad_rows=skip", "data.shuffle_buffer=0",
               "train.checkpoint=false")
    try:
        Trainer(cfg).train()
    finally:
        destroy_distributed()
    assert "data: skipped on all ranks (rows per reason; files): bad_label 5" in capsys.readouterr().out
