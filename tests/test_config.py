"""Config errors name the key at fault (and the allowed keys); overrides apply; the shipped configs load."""

import json
import re
from pathlib import Path

import pytest

from longer_train.config import ConfigError, load_config
from longer_train.machine import check_machine
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
        ("data.num_workers=-1", ["'data.num_workers'", "[0, 256]"]),
        ("parallel.compile=maybe", ["'parallel.compile'", "bool"]),
        ("parallel.collective_timeout_s=100000000000000", ["'parallel.collective_timeout_s'", "604800"]),
        ("data.num_workers=100000", ["'data.num_workers'", "[0, 256]"]),
        ("train.run_name=../../escape_dir", ["'train.run_name'", "plain name", "escape_dir"]),
        (f"train.run_name={Path.cwd().anchor}run", ["'train.run_name'", "no '/'"]),  # an absolute name
        ("train.run_name=a..b", ["'train.run_name'", "'..'"]),
        ("train.checkpoint_every=1 train.checkpoint=false", ["'train.checkpoint_every'", "train.checkpoint=false"]),
    ],
)
def test_bad_keys_are_named(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, override.split())
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
    with pytest.raises(ConfigError, match=rf"model.name={name}: .*'model.head_dim'"):
        load_config(QUICKSTART, [f"model.name={name}", "model.head_dim=32"])
    for key in ("twin_top_k", "hstu_layers"):
        with pytest.raises(ConfigError, match=rf"'model.{key}'.*0"):
            load_config(QUICKSTART, [f"model.name={name}", "model.head_dim=8", f"model.{key}=0"])
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


# ----------------------------------------------------------------------------------------------------
# numeric ranges, the YAML file itself, and what the config asks of the machine
# ----------------------------------------------------------------------------------------------------
def _override(key: str, value) -> tuple[str, str]:
    """(override, the key an error names) for a schema key (`data.tables.<table>.x`, `model.head_hidden[]`)
    set to `value` on quickstart; a list key gets a one-element list."""
    key = key.replace("<table>", "item")
    text = {"nan": ".nan", "inf": ".inf"}.get(str(value), str(value))  # YAML spells them this way
    if key.endswith("[]"):
        return f"{key[:-2]}=[{text}]", key.replace("[]", "[0]")
    return f"{key}={text}", key


def _outside(bound, tp) -> list:
    """Values just outside the bound (and non-finite ones for floats)."""
    step = 1 if tp is int else 0.5
    values = []
    if bound.low is not None:
        values.append(tp(bound.low) if bound.low_open else tp(bound.low - step))
    if bound.high is not None:
        values.append(tp(bound.high) if bound.high_open else tp(bound.high + step))
    if tp is float:
        values += [float("nan"), float("inf")]
    return values


def _numeric_cases():
    from longer_train.config import numeric_keys

    return [(key, tp, bound, value) for key, (tp, bound) in numeric_keys().items() for value in _outside(bound, tp)]


def test_every_numeric_key_declares_a_range():
    from longer_train.config import numeric_keys

    keys = numeric_keys()
    assert len(keys) >= 35 and "optim.min_lr_ratio" in keys and "data.tables.<table>.num_embeddings" in keys
    assert [key for key, (_, bound) in keys.items() if bound is None] == []


@pytest.mark.parametrize("key, tp, bound, value", _numeric_cases(), ids=lambda v: str(v))
def test_a_numeric_key_outside_its_range_names_the_key_and_the_range(key, tp, bound, value):
    override, named = _override(key, value)
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [override])
    message = str(err.value)
    assert f"'{named}'" in message and str(bound) in message, message


def test_the_issues_values_are_refused_at_load_time():
    cases = {
        "optim.warmup_steps=-10": ">= 0", "optim.min_lr_ratio=5": "in [0, 1]", "optim.grad_clip=-1": ">= 0",
        "train.eval_every=-1": ">= 0", "train.max_steps=-1": ">= 0", "model.head_hidden=[0]": ">= 1",
        "optim.lr=-0.001": "> 0", "optim.sparse_lr=-1": "> 0", "optim.weight_decay=-0.1": ">= 0",
        "model.dropout=1.5": "in [0, 1)", "train.log_every=0": ">= 1", "model.time_buckets=100000000": "in [1, 128]",
    }
    for override, allowed in cases.items():
        key = override.split("=")[0].replace("head_hidden", "head_hidden[0]")
        with pytest.raises(ConfigError, match=re.escape(f"'{key}' must be {allowed}, got")):
            load_config(QUICKSTART, [override])


def test_tables_that_cannot_fit_in_memory_are_refused():
    with pytest.raises(ConfigError) as err:
        check_machine(load_config(QUICKSTART, ["data.tables.item.num_embeddings=1000000000000"]))
    message = str(err.value)
    assert "'data.tables.item.num_embeddings' (1000000000000)" in message and "GiB" in message
    allowed = int(re.search(r"must be in \[1, (\d+)\]", message).group(1))
    assert 1 < allowed < 10**12
    check_machine(load_config(QUICKSTART, [f"data.tables.item.num_embeddings={allowed // 2}"]))  # within range


def test_cuda_is_checked_against_the_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"'train.device' is 'cuda' but this machine has no usable CUDA device"):
        check_machine(load_config(QUICKSTART, ["train.device=cuda"]))
    check_machine(load_config(QUICKSTART, ["train.device=auto"]))


@pytest.mark.parametrize("content, expected", [
    (b"- data\n- model\n", "the top level must be a mapping of config sections (data, model, optim"),
    (b"model:\n  name: \xe9t\xe9\n", "not UTF-8 text (byte 0xe9 at offset 15)"),
    (b"model: {merge_k: 4\n", "not valid YAML"),
    (b"42\n", "the top level must be a mapping"),
])
def test_a_yaml_file_that_is_not_a_config_mapping_is_named(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_override_with_invalid_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match=r"override 'model.head_hidden=\[1': the value is not valid YAML"):
        load_config(QUICKSTART, ["model.head_hidden=[1"])


def test_table_sizes_read_from_the_data_are_checked_against_memory_too(tmp_path):
    from longer_train.trainer import Trainer

    sizes = {"item_id": 10**12, "hist_item_id": 10**12, "category_id": 50, "hist_category_id": 50, "hist_action": 3,
             "user_id": 4000, "user_segment": 8}
    (tmp_path / "meta.json").write_text(json.dumps({"num_embeddings": sizes}))
    cfg = load_config(QUICKSTART, [f"data.root={tmp_path}", "data.tables.item.num_embeddings=auto"])
    with pytest.raises(ConfigError, match=r"'data.tables.item.num_embeddings' \(1000000000000\): .* GiB"):
        Trainer(cfg)  # before any process group or table is made


def test_triton_attention_without_cuda_or_its_interpreter_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match=r"'model.attention_impl' is 'triton' but this process has no CUDA device"):
        check_machine(load_config(QUICKSTART, ["model.attention_impl=triton", "train.device=cpu"]))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_machine(load_config(QUICKSTART, ["model.attention_impl=triton", "train.device=cpu"]))  # interpreted
