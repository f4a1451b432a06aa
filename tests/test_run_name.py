"""The default run name (`<model>-<hash>`) that lets the same command find its run and checkpoints again:
stable under what does not change training, including a config field added later with a default."""

import dataclasses

from test_config import QUICKSTART

from longer_train.components.run_dir import default_run_name
from longer_train.config import ModelConfig, load_config


def _name(*overrides: str) -> str:
    return default_run_name(load_config(QUICKSTART, ["data.root=data/synthetic", *overrides]))


def test_same_for_what_does_not_change_training():
    base = _name()
    assert base.startswith("longer-") and len(base) == len("longer-") + 10
    default_seed = load_config(QUICKSTART).train.seed
    assert _name(f"train.seed={default_seed}") == base  # a default set explicitly
    for key in ("train.checkpoint_every=7", "train.keep_checkpoints=5", "train.log_every=3",
                "train.resume=never", "train.progress_bar=false", "logging.wandb_mode=disabled"):
        assert _name(key) == base, key


def test_differs_for_what_changes_training():
    base = _name()
    names = {_name(key) for key in ("train.seed=7", "model.merge_k=4", "optim.lr=0.01", "data.max_len=50",
                                    "data.root=data/other", "data.tables.item.num_embeddings=30000")}
    assert base not in names and len(names) == 6


def test_a_config_field_added_later_with_a_default_keeps_the_name():
    """A newer version that adds a model option (default off) must still resume the runs of an older one."""
    cfg = load_config(QUICKSTART, ["data.root=data/synthetic"])
    before = default_run_name(cfg)
    newer = dataclasses.make_dataclass("ModelConfig", [("new_option", str, dataclasses.field(default="off"))],
                                       bases=(ModelConfig,))
    cfg.model = newer(**{f.name: getattr(cfg.model, f.name) for f in dataclasses.fields(ModelConfig)})
    assert default_run_name(cfg) == before
    cfg.model.new_option = "on"
    assert default_run_name(cfg) != before
