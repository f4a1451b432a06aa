"""A small trained checkpoint and its scorer, shared by the scorer and HTTP tests (trained once)."""

import pytest
from test_config import QUICKSTART

from longer_train.config import load_config
from longer_train.data.store import read_inline
from longer_train.datasets import synthetic
from longer_train.distributed.process_group import destroy_distributed
from longer_train.serve.scorer import Scorer
from longer_train.trainer import Trainer


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    synthetic.generate(root / "data", users=300, max_len=64, seed=4)
    cfg = load_config(QUICKSTART, [
        f"data.root={root / 'data'}", "data.max_len=64", "data.batch_size=64", "train.max_steps=20",
        f"train.output_dir={root}/runs", f"train.runs_table={root}/runs.jsonl", "train.run_name=serve",
        "train.progress_bar=false", "logging.wandb_mode=disabled", "data.num_workers=0",
    ])
    try:
        summary = Trainer(cfg).train()
    finally:
        destroy_distributed()
    test = read_inline(root / "data", "test", cfg.data)  # requests carry their histories (inline schema)
    return summary, Scorer.from_checkpoint(summary["checkpoint"]), test


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small synthetic store (histories up to 64 events) for scorers built without training."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    synthetic.generate(root, users=60, max_len=64, seed=3)
    return root
