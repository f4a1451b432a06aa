"""The match task generator: unseen test users, histories before the request, no signal outside the
candidate–history overlap, and the oracles it records."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from longer_train.components.metrics import auc
from longer_train.config import DataConfig, FeatureConfig
from longer_train.data.store import read_inline
from longer_train.datasets import cli, synthetic_match

SPLITS = ("train", "valid", "test")
SEQUENCE = ("hist_item_id", "hist_category_id", "hist_action")


@pytest.fixture(scope="module", params=synthetic_match.VARIANTS)
def match(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"match_{request.param}") / "d"
    meta = synthetic_match.generate(out, users=1500, max_len=300, variant=request.param)
    cfg = DataConfig(max_len=300, features=[FeatureConfig(c, "sequence", "t") for c in SEQUENCE])
    return out, meta, {s: read_inline(out, s, cfg) for s in SPLITS}  # histories rebuilt from the store


def test_splits_hold_disjoint_users_and_histories_precede_the_request(match):
    _, meta, tables = match
    users = {s: set(t["user_id"].to_numpy()) for s, t in tables.items()}
    assert not users["train"] & users["test"] and not users["train"] & users["valid"]
    assert not users["valid"] & users["test"]
    assert {s: t.num_rows for s, t in tables.items()} == meta["rows"] == {"train": 12000, "valid": 1500, "test": 1500}
    table = pa.concat_tables(tables.values()).combine_chunks()
    hist = table["hist_timestamp"].chunk(0)
    times, rows = pc.list_flatten(hist).to_numpy(), pc.list_parent_indices(hist).to_numpy()
    assert (times < table["timestamp"].to_numpy()[rows]).all()
    assert (np.diff(times)[rows[1:] == rows[:-1]] > 0).all()
    length = pc.list_value_length(hist).to_numpy()
    assert length.min() >= 110 and length.max() == 300


def _count(table: pa.Table, newest: int | None = None) -> np.ndarray:
    hist = table["hist_category_id"].combine_chunks()
    cats, rows = pc.list_flatten(hist).to_numpy(), pc.list_parent_indices(hist).to_numpy()
    ends = np.cumsum(pc.list_value_length(hist).to_numpy())
    keep = (ends[rows] - np.arange(len(cats)) <= newest) if newest else np.ones(len(cats), bool)
    return np.bincount(rows, (cats == table["category_id"].to_numpy()[rows]) & keep, table.num_rows)


def test_only_the_overlap_predicts_the_click(match):
    """Per-category / per-item click rates learned on train rows say nothing on test rows; the count of the
    candidate's category in the history (whole history for `long`, the newest 50 for `recent`) does."""
    _, meta, tables = match
    train, test = tables["train"], tables["test"]
    y_train, y_test = train["label"].to_numpy(), test["label"].to_numpy()
    for column in ("category_id", "item_id", "user_segment"):
        ids = np.concatenate([train[column].to_numpy(), test[column].to_numpy()])
        size = ids.max() + 1
        rate = (np.bincount(train[column].to_numpy(), y_train, size) + y_train.mean()) / (
            np.bincount(train[column].to_numpy(), minlength=size) + 1)
        assert abs(auc(y_test, rate[test[column].to_numpy()]) - 0.5) < 0.05, column
    newest = None if meta["params"]["variant"] == "long" else synthetic_match.RECENT_WINDOW
    assert auc(y_test, _count(test, newest)) > 0.62
    assert meta["oracle_auc"]["test"]["true_probability"] > 0.62


def test_oracles_say_which_part_of_the_history_holds_the_signal(match):
    _, meta, tables = match
    test = meta["oracle_auc"]["test"]
    y = tables["test"]["label"].to_numpy()
    if meta["params"]["variant"] == "long":
        assert test["logistic_count_full"] == pytest.approx(test["true_probability"], abs=0.005)
        assert test["newest_50_oracle"] < test["true_probability"] - 0.03
        assert test["logistic_count_full"] == pytest.approx(auc(y, _count(tables["test"])), abs=0.005)
    else:
        assert test["logistic_count_recent50"] == pytest.approx(test["true_probability"], abs=0.005)
        assert test["logistic_count_full"] < test["true_probability"] - 0.05


def test_cli_prints_the_oracles_and_is_deterministic(tmp_path, capsys):
    args = ["synthetic", "--task", "match", "--variant", "long", "--users", "200", "--max-len", "120"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "true_probability" in out and "logistic_count_recent50" in out and "variant=long" in out
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "meta.json").read_text()) for d in "ab")
    assert a == b and a["task"] == "match"
    for split in (*SPLITS, "events"):
        assert pq.read_table(tmp_path / "a" / split).equals(pq.read_table(tmp_path / "b" / split))
