"""Synthetic generator: layout, schema validity, determinism, time split, histories, long-history signal."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from data_configs import data_config

from longer_train.components.metrics import auc
from longer_train.config import DataConfig, FeatureConfig
from longer_train.data.schema import validate_batch, validate_schema
from longer_train.data.store import open_event_log, read_inline
from longer_train.datasets import cli, synthetic

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    meta = synthetic.generate(out, users=200, max_len=64, seed=3)
    return out, meta


def _cfg(meta: dict, root=None) -> DataConfig:
    vocab = meta["vocab"]
    tables = {"item": vocab["items"], "category": vocab["categories"], "action": vocab["actions"],
              "user": vocab["users"], "segment": vocab["user_segments"]}
    extra = [FeatureConfig("user_segment", "user", "segment"), FeatureConfig("user_activity", "dense", None)]
    cfg = data_config(tables, extra)
    cfg.max_len, cfg.root = meta["params"]["max_len"], str(root or cfg.root)
    return cfg


def _read(out, split: str) -> pa.Table:
    """A split in the inline schema (histories rebuilt from the store's event log, cut at the generator's
    max_len)."""
    return read_inline(out, split, _cfg(json.loads((out / "meta.json").read_text())))


def test_layout_and_meta(tiny):
    out, meta = tiny
    assert (out / ".complete").is_file() and (out / ".complete").stat().st_size == 0
    assert json.loads((out / "meta.json").read_text()) == meta
    vocab = {"items": 20000, "categories": 50, "actions": 3, "users": 200, "user_segments": 8}
    assert meta["vocab"] == vocab
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]  # the temp folder was renamed
    lengths = []
    for split in SPLITS:
        files = sorted((out / split).glob("part-*.parquet"))
        assert files[0].name == "part-00000.parquet"
        table = _read(out, split)
        assert table.num_rows == meta["rows"][split] > 0
        assert meta["positive_rate"][split] == pytest.approx(pc.mean(table["label"]).as_py(), abs=1e-4)
        lengths.append(pc.list_value_length(table["hist_item_id"]).to_numpy())
    lengths = np.concatenate(lengths)
    assert meta["history_length"]["max"] == lengths.max() <= 64
    assert meta["history_length"]["p50"] == int(np.percentile(lengths, 50))
    assert meta["history_length"]["empty"] == (lengths == 0).sum() > 0


def test_every_row_group_validates_against_a_matching_config(tiny):
    out, meta = tiny
    cfg = _cfg(meta, out)
    events = open_event_log(cfg)  # sorted by user then time, every value column memory-mapped
    assert events.num_events == meta["events"]["rows"] and len(events.plain) == 4 * len(events.chunks)
    for split in SPLITS:
        for path in sorted((out / split).glob("*.parquet")):
            parquet = pq.ParquetFile(path)
            validate_schema(parquet.schema_arrow, cfg, str(path), history=False)
            first_row = 0
            for group in range(parquet.num_row_groups):
                batch = events.rebuild(parquet.read_row_group(group))[0].to_batches()[0]
                validate_batch(batch, cfg, str(path), first_row)
                first_row += batch.num_rows
    segments = pc.unique(_read(out, "train")["user_segment"]).to_numpy()
    assert set(segments) <= set(range(8)) and len(segments) > 1


def test_same_seed_same_rows_other_seed_other_rows(tiny, tmp_path):
    out, _ = tiny
    again = synthetic.generate(tmp_path / "again", users=200, max_len=64, seed=3)
    other = synthetic.generate(tmp_path / "other", users=200, max_len=64, seed=4)
    for split in SPLITS:
        assert _read(tmp_path / "again", split).equals(_read(out, split))
    assert not _read(tmp_path / "other", "train").equals(_read(out, "train"))
    assert again["rows"] == tiny[1]["rows"] and other["rows"] != tiny[1]["rows"]


def test_time_split_is_ordered(tiny):
    out, _ = tiny
    ts = {s: _read(out, s)["timestamp"].to_numpy() for s in SPLITS}
    assert ts["train"].max() <= ts["valid"].min() <= ts["valid"].max() <= ts["test"].min()


def test_histories_sorted_equal_length_and_before_the_request(tiny):
    out, _ = tiny
    table = pa.concat_tables([_read(out, s) for s in SPLITS]).combine_chunks()
    hist = table["hist_timestamp"].chunk(0)
    times, rows = pc.list_flatten(hist).to_numpy(), pc.list_parent_indices(hist).to_numpy()
    same_row = rows[1:] == rows[:-1]
    assert (np.diff(times)[same_row] >= 0).all()
    assert (times <= table["timestamp"].to_numpy()[rows]).all()
    length = pc.list_value_length(hist).to_numpy()
    for name in ("hist_item_id", "hist_category_id", "hist_action"):
        assert (pc.list_value_length(table[name]).to_numpy() == length).all()
    assert length.max() == 64 and (length < 64).any()  # long histories truncated to max_len, short kept


def test_full_history_predicts_the_label_better_than_the_last_50_events(tmp_path):
    meta = synthetic.generate(tmp_path / "d", users=1200, max_len=512, seed=0)
    for split in SPLITS:  # the label model's own probabilities, and the same model knowing the newest 50 events
        oracle = meta["oracle_auc"][split]
        assert oracle["true_probability"] > oracle["newest_50_oracle"] + 0.03 > 0.53, (split, oracle)
    table = pa.concat_tables([_read(tmp_path / "d", s) for s in SPLITS]).combine_chunks()
    label, cand = table["label"].to_numpy(), table["category_id"].to_numpy()
    hist = table["hist_category_id"].chunk(0)
    cats, rows = pc.list_flatten(hist).to_numpy(), pc.list_parent_indices(hist).to_numpy()
    length = pc.list_value_length(hist).to_numpy()
    from_end = np.concatenate([[0], np.cumsum(length)])[rows + 1] - np.arange(len(cats))  # 1 = newest
    match = cats == cand[rows]
    f_full = np.bincount(rows, match, len(label)) / np.maximum(length, 1)
    f_50 = np.bincount(rows, match & (from_end <= 50), len(label)) / np.maximum(np.minimum(length, 50), 1)
    auc_full, auc_50 = auc(label, f_full), auc(label, f_50)
    assert auc_50 > 0.51  # recent history carries the short-term interest
    assert auc_full > auc_50 + 0.03, (auc_full, auc_50)
    assert 0.25 <= label.mean() <= 0.50


def test_item_popularity_is_long_tailed(tiny):
    out, _ = tiny
    items = pc.list_flatten(_read(out, "train")["hist_item_id"]).to_numpy()
    counts = np.sort(np.bincount(items, minlength=20000))[::-1]
    assert counts[:200].sum() > 0.2 * counts.sum()  # top 1% of items: over a fifth of all events


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing"):
        synthetic.generate(tmp_path, users=5, max_len=8)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_cli_skips_a_complete_dataset_unless_forced(tmp_path, capsys):
    out = tmp_path / "d"
    assert cli.main(["synthetic", "--out", str(out), "--users", "30", "--max-len", "16", "--seed", "1"]) == 0
    assert "train" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["params"]["users"] == 30
    assert cli.main(["synthetic", "--out", str(out), "--users", "40"]) == 0
    assert "already there" in capsys.readouterr().out
    assert json.loads((out / "meta.json").read_text())["params"]["users"] == 30
    assert cli.main(["synthetic", "--out", str(out), "--users", "40", "--max-len", "16", "--force"]) == 0
    assert json.loads((out / "meta.json").read_text())["params"]["users"] == 40
