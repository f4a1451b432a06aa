"""Config errors name the key at fault (and the allowed keys); overrides apply; the shipped configs load."""

from pathlib import Path

import pytest

from longer_train.config import ConfigError, load_config
from longer_train.train import main

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def test_quickstart_loads_and_overrides_apply():
    cfg = load_config(QUICKSTART, ["train.seed=7", "model.merge=inner_trans", "data.max_len=50"])
    assert (cfg.train.seed, cfg.model.merge, cfg.data.max_len) == (7, "inner_trans", 50)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.n_layers=2", ["'model.n_layers'", "num_self_layers", "merge_k"]),
        ("trian.seed=1", ["'trian'", "train", "optim"]),
        ("model.merge_k=four", ["'model.merge_k'", "int"]),
        ("model.merge=sum", ["'model.merge'", "concat", "inner_trans"]),
        ("optim.lr=fast", ["'optim.lr'", "float"]),
        ("data.tables.item.dim=8", ["'data.tables.item.dim'", "embedding_dim"]),
        ("data.features.0.table=nope", ["'data.features[0].table'", "item"]),
        ("model.head_dim=48", ["'model.head_dim'", "divide"]),
        ("data.tables.category.embedding_dim=8", ["'data.tables'", "embedding_dim"]),
        ("data.bad_rows=drop", ["'data.bad_rows'", "skip"]),
        ("data.bad_files=ignore", ["'data.bad_files'", "skip"]),
        ("data.tables.item.oov=zero", ["'data.tables.item.oov'", "oov_row"]),
        ("data.num_workers=-1", ["'data.num_workers'", ">= 0"]),
    ],
)
def test_bad_keys_are_named(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [override])
    for fragment in expected:
        assert fragment in str(err.value)
    assert str(QUICKSTART) in str(err.value)


def test_unknown_key_in_yaml_is_named(tmp_path):
    text = QUICKSTART.read_text().replace("  num_cls: 2", "  num_cls: 2\n  num_globals: 3")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"unknown config key 'model.num_globals'; allowed keys under 'model'"):
        load_config(path)


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(QUICKSTART, ["train.seed"])


def test_cli_reports_config_errors(capsys):
    assert main([str(QUICKSTART), "model.typo=1"]) == 2
    assert "model.typo" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(QUICKSTART.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.features and cfg.data.tables
