"""Config errors name the key at fault (and the allowed keys); overrides apply; the shipped configs load."""

from pathlib import Path

import pytest

from longer_train.config import ConfigError, load_config
from longer_train.train import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICKSTART = CONFIGS / "quickstart.yaml"


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
    longer = (CONFIGS / "experiments" / "longer.yaml").read_text()
    text = longer.replace("  num_cls: 2", "  num_cls: 2\n  num_globals: 3")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"unknown config key 'model.num_globals'; allowed keys under 'model'"):
        load_config(path)


def test_pool_norm_on_a_model_without_pooling_is_rejected():
    with pytest.raises(ConfigError, match=r"'model.pool_norm' \(softmax\) applies to .* not longer"):
        load_config(QUICKSTART, ["model.pool_norm=softmax"])
    assert load_config(QUICKSTART, ["model.name=din", "model.pool_norm=softmax"]).model.pool_norm == "softmax"


@pytest.mark.parametrize("name", ["twin", "hstu"])
def test_twin_and_hstu_heads_divide_the_token_width_and_sizes_are_positive(name):
    for bad in (["model.head_dim=32"], ["model.head_dim=8", "model.twin_top_k=0"], ["model.head_dim=8",
                                                                                    "model.hstu_layers=0"]):
        with pytest.raises(ConfigError, match=rf"model.name={name}: .*'model.head_dim'.*'model.twin_top_k'"):
            load_config(QUICKSTART, [f"model.name={name}", *bad])
    assert load_config(QUICKSTART, [f"model.name={name}", "model.head_dim=8"]).model.name == name


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


@pytest.mark.parametrize("dataset", sorted((CONFIGS / "datasets").glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("experiment", sorted((CONFIGS / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_dataset_composes_with_every_experiment(dataset, experiment):
    cfg = load_config([dataset, experiment])
    assert cfg.data.features and cfg.data.tables


def test_experiments_change_only_what_they_name():
    base = load_config([CONFIGS / "datasets" / "movielens.yaml", CONFIGS / "experiments" / "longer.yaml"])
    transformer = load_config([CONFIGS / "datasets" / "movielens.yaml", CONFIGS / "experiments" / "transformer.yaml"])
    recent = load_config([CONFIGS / "datasets" / "movielens.yaml", CONFIGS / "experiments" / "din_recent50.yaml"])
    assert (transformer.model.merge_k, transformer.data.max_len) == (1, base.data.max_len)
    assert transformer.model.num_queries >= transformer.data.max_len  # every position is a query
    assert (recent.model.name, recent.data.max_len) == ("din", 50)  # the experiment wins over the dataset
    assert recent.optim == base.optim and recent.train == base.train and recent.data.tables == base.data.tables


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_merge_in_order_then_the_file_then_overrides(tmp_path):
    _write(tmp_path / "parts" / "a.yaml", "model: {merge_k: 2, num_cls: 3}\ntrain: {seed: 1}\n")
    _write(tmp_path / "parts" / "b.yaml", "model: {merge_k: 4}\ntrain: {seed: 2, epochs: 5}\n")
    top = _write(tmp_path / "top.yaml", f"defaults: [{QUICKSTART}, parts/a.yaml, parts/b.yaml]\ntrain: {{seed: 3}}\n")
    cfg = load_config(top)
    # b after a (merge_k 4), a's keys that b leaves alone survive (num_cls 3), the file itself last (seed 3)
    assert (cfg.model.merge_k, cfg.model.num_cls, cfg.train.seed, cfg.train.epochs) == (4, 3, 3, 5)
    assert load_config(top, ["train.seed=9", "model.merge_k=8"]).train.seed == 9  # overrides win over files
    # several files on the command line merge in order, like a defaults list
    assert load_config([top, tmp_path / "parts" / "a.yaml"]).model.merge_k == 2


def test_unknown_key_in_an_included_file_names_that_file_and_key(tmp_path):
    bad = _write(tmp_path / "experiments" / "bad.yaml", "model:\n  merge_k: 2\n  n_layers: 3\n")
    top = _write(tmp_path / "top.yaml", f"defaults: [{QUICKSTART}, experiments/bad.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(top)
    assert str(bad) in str(err.value) and "unknown config key 'model.n_layers'" in str(err.value)


def test_missing_or_circular_defaults_are_named(tmp_path):
    top = _write(tmp_path / "top.yaml", "defaults: [nope.yaml]\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml \(in 'defaults' of .*top.yaml\)"):
        load_config(top)
    _write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    _write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "a.yaml")


def test_cli_merges_several_configs_then_overrides(capsys):
    dataset, experiment = CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / "longer.yaml"
    assert main([str(dataset), str(experiment), "model.typo=1"]) == 2
    assert "model.typo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(dataset), "train.seed=1", str(experiment)])  # files after an override: usage error
