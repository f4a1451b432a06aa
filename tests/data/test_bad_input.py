"""Bad input through the loader: each kind is an error naming file, row and column, or (data.bad_rows /
data.bad_files = skip) is dropped and counted; ids beyond a vocabulary follow the table's OOV policy;
empty histories are valid."""

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_configs import data_config

from longer_train.config import FeatureConfig
from longer_train.data.loader import ParquetStream, ShardedLoader
from longer_train.data.oov import map_ids
from longer_train.data.schema import SchemaError
from longer_train.data.store import read_inline
from longer_train.datasets import synthetic
from longer_train.models.sparse_arch import SparseArch

BAD_ROW = 37  # row within the file, in the second row group of 25 rows
LIST = pa.list_(pa.int64())


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    meta = synthetic.generate(root, users=80, max_len=20, seed=3)
    table = read_inline(root, "train", _cfg(meta["vocab"])).slice(0, 200)  # inline rows: bad values go in lists
    return table.drop_columns(["user_segment"]), meta["vocab"]


def _cfg(vocab, **kw):
    cfg = data_config({"item": vocab["items"], "category": vocab["categories"], "action": vocab["actions"],
                       "user": vocab["users"]}, [FeatureConfig("user_activity", "dense")])
    cfg.max_len = 20
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def _with(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, table.schema.field(column).type))


def _write(table: pa.Table, path) -> str:
    pq.write_table(table, path, row_group_size=25)
    return str(path)


def _read_all(paths, cfg, batch_size=16, shuffle=False, num_workers=0):
    loader = ShardedLoader(ParquetStream(paths, cfg, batch_size, shuffle, num_workers=num_workers), num_workers)
    batches = list(loader)
    assert len(batches) == loader.num_batches() and all(b.size > 0 for b in batches)
    return batches, loader


def _bad_rows(table: pa.Table):
    """(column, bad value, reason, fragment of the error) for each row-level problem."""
    hist = table.column("hist_timestamp")[BAD_ROW].as_py()
    request = table.column("timestamp")[BAD_ROW].as_py()
    return [
        ("hist_action", table.column("hist_action")[BAD_ROW].as_py() + [0], "unequal_lengths", "equal length"),
        ("item_id", -4, "negative_id", "id -4 is outside"),
        ("hist_category_id", [-1] * len(hist), "negative_id", "id -1 is outside"),
        ("item_id", 10**9, "id_out_of_vocab", "num_embeddings="),
        ("label", float("nan"), "bad_label", "label is nan"),
        ("label", 2.0, "bad_label", "expected 0 or 1"),
        ("hist_timestamp", [request + 1] * len(hist), "future_event", "after the request time"),
        ("user_id", None, "null", "null"),
        # -9e18 would overflow the loader's int64 time differences
        ("hist_timestamp", [-(9 * 10**18)] * len(hist), "bad_timestamp", "is negative"),
        ("user_activity", 1e25, "bad_dense", "within +-1e+12"),
    ]


def _file_with_bad_row(table: pa.Table, tmp_path, case: int) -> tuple[str, str, str, str]:
    """(path, column, reason, message fragment): the table written with bad row `case` at BAD_ROW."""
    column, value, reason, fragment = _bad_rows(table)[case]
    if column == "hist_timestamp" and not table.column(column)[BAD_ROW].as_py():
        pytest.skip("the chosen row has an empty history")
    return _write(_with(table, column, BAD_ROW, value), tmp_path / "bad.parquet"), column, reason, fragment


@pytest.mark.parametrize("case", range(10))
def test_bad_row_is_an_error_naming_file_row_and_column(clean, tmp_path, case):
    table, vocab = clean
    path, column, _, fragment = _file_with_bad_row(table, tmp_path, case)
    with pytest.raises(SchemaError) as err:
        _read_all([path], _cfg(vocab))
    assert str(err.value).startswith(f"{path}: row {BAD_ROW}, column '{column}': ")
    assert fragment in str(err.value)


@pytest.mark.parametrize("case", range(10))
def test_bad_row_is_skipped_and_counted(clean, tmp_path, case):
    table, vocab = clean
    path, _, reason, _ = _file_with_bad_row(table, tmp_path, case)
    batches, loader = _read_all([path], _cfg(vocab, bad_rows="skip"))
    users = [u for b in batches for u in b.user_ids.tolist()]
    expected = table.column("user_id").to_pylist()
    del expected[BAD_ROW]
    assert users == expected  # in order (no shuffle), only the bad row is missing
    assert sum((Counter(b.skipped) for b in batches), Counter()) == {reason: 1}
    assert loader.skipped == {reason: 1}


def test_skipped_counts_reach_the_main_process_from_workers(clean, tmp_path):
    table, vocab = clean
    bad = _with(_with(table, "label", 3, 0.5), "item_id", 150, -1)
    path = _write(bad, tmp_path / "bad.parquet")
    batches, loader = _read_all([path], _cfg(vocab, bad_rows="skip"), num_workers=2)
    assert loader.skipped == {"bad_label": 1, "negative_id": 1}
    assert sum(b.size for b in batches) == table.num_rows - 2


def test_a_batch_of_only_bad_rows_is_not_yielded_empty(clean, tmp_path):
    table, vocab = clean
    labels = table.column("label").to_numpy().copy()
    labels[16:32] = 3.0  # exactly the second batch of 16 rows
    bad = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    batches, loader = _read_all([_write(bad, tmp_path / "bad.parquet")], _cfg(vocab, bad_rows="skip"))
    assert len(batches) == loader.num_batches() == 13  # ceil(200 / 16)
    assert sum(b.size for b in batches) == 200 - 16 and loader.skipped == {"bad_label": 16}


def test_too_few_valid_rows_for_the_batch_count_is_an_error(clean, tmp_path):
    table, vocab = clean
    bad = table.set_column(table.schema.get_field_index("label"), "label", pa.array(np.full(200, 0.5)))
    with pytest.raises(SchemaError, match="no valid row left"):
        _read_all([_write(bad, tmp_path / "bad.parquet")], _cfg(vocab, bad_rows="skip"))


def test_empty_histories_are_valid(clean, tmp_path):
    table, vocab = clean
    empty = pa.array([[]] * table.num_rows, LIST)
    for name in ("hist_item_id", "hist_category_id", "hist_action", "hist_timestamp"):
        table = table.set_column(table.schema.get_field_index(name), name, empty)
    batches, _ = _read_all([_write(table, tmp_path / "empty.parquet")], _cfg(vocab))
    assert sum(b.size for b in batches) == 200
    assert all(b.per_id["hist_item_id"].lengths().sum() == 0 and b.time_diff.numel() == 0 for b in batches)


def test_schema_mismatch_is_an_error_or_skips_the_file(clean, tmp_path, caplog):
    table, vocab = clean
    good = _write(table, tmp_path / "good.parquet")
    bad = _write(table.drop_columns(["hist_action"]), tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match=r"bad\.parquet: missing column 'hist_action'"):
        _read_all([good, bad], _cfg(vocab))
    with caplog.at_level(logging.WARNING):
        batches, loader = _read_all([good, bad], _cfg(vocab, bad_files="skip"))
    assert sum(b.size for b in batches) == 200 and loader.skipped == {"files": 1}
    assert "bad.parquet" in caplog.text and "hist_action" in caplog.text


def test_truncated_file_is_an_error_or_skipped(clean, tmp_path, caplog):
    table, vocab = clean
    good = _write(table, tmp_path / "good.parquet")
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    cut = str(tmp_path / "cut.parquet")
    with pytest.raises(SchemaError, match=r"cut\.parquet: cannot read Parquet file"):
        _read_all([good, cut], _cfg(vocab))
    with caplog.at_level(logging.WARNING):
        batches, loader = _read_all([good, cut], _cfg(vocab, bad_files="skip"))
    assert sum(b.size for b in batches) == 200 and "cut.parquet" in caplog.text


def test_corrupt_row_group_is_an_error_or_its_rows_are_skipped(clean, tmp_path):
    table, vocab = clean
    path = _write(table, tmp_path / "corrupt.parquet")
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(table.schema.get_field_index("item_id"))
    data = bytearray((tmp_path / "corrupt.parquet").read_bytes())
    data[chunk.data_page_offset + 10: chunk.data_page_offset + 60] = b"\xab" * 50  # the page header
    (tmp_path / "corrupt.parquet").write_bytes(bytes(data))
    with pytest.raises(SchemaError, match=r"corrupt\.parquet: rows 25\.\.49 \(row group 1\) cannot be read"):
        _read_all([path], _cfg(vocab))
    batches, loader = _read_all([path], _cfg(vocab, bad_files="skip"))
    assert loader.skipped == {"unreadable": 25} and sum(b.size for b in batches) == 175


@pytest.mark.parametrize("policy", ["hash", "oov_row"])
def test_ids_beyond_the_vocabulary_follow_the_oov_policy(clean, tmp_path, policy):
    table, vocab = clean
    size = vocab["items"]
    bad = _with(table, "item_id", 0, size + 5)
    hist = bad.column("hist_item_id")[1].as_py()
    bad = _with(bad, "hist_item_id", 1, [size + 7] * len(hist))
    cfg = _cfg(vocab)
    cfg.tables["item"].oov = policy
    batches, _ = _read_all([_write(bad, tmp_path / "oov.parquet")], cfg)
    first = batches[0].per_id
    lengths = first["hist_item_id"].lengths().tolist()
    row1 = first["hist_item_id"].values()[lengths[0]: lengths[0] + lengths[1]].tolist()
    expected = (5, 7 % size) if policy == "hash" else (size, size)
    assert first["item_id"].values()[0].item() == expected[0]
    assert row1 == [expected[1]] * len(hist)
    rows = {c.name: c.num_embeddings for c in SparseArch(cfg, device=torch.device("cpu")).per_id.embedding_configs()}
    assert rows["item"] == size + (policy == "oov_row")


def test_negative_ids_stay_bad_under_every_policy(clean, tmp_path):
    table, vocab = clean
    cfg = _cfg(vocab)
    cfg.tables["item"].oov = "hash"
    with pytest.raises(SchemaError, match=f"row {BAD_ROW}, column 'item_id': id -2"):
        _read_all([_write(_with(table, "item_id", BAD_ROW, -2), tmp_path / "neg.parquet")], cfg)
    assert map_ids(np.array([3, 10, 11]), cfg.tables["category"]).tolist() == [3, 10, 11]  # error: unchanged


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_after_dropped_rows_continues_with_exactly_the_next_batch(clean, tmp_path, shuffle):
    """Under bad_rows=skip the delivered part is re-validated on resume: a batch whose rows were all dropped
    (made up by splitting the next one) shifts the batches after it the same way in both lives."""
    table, vocab = clean
    labels = table.column("label").to_numpy().copy()
    labels[16:32] = 3.0  # the second batch of 16 rows, without shuffling
    labels[101] = 2.0
    bad = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    path = _write(bad, tmp_path / "bad.parquet")
    cfg = _cfg(vocab, bad_rows="skip", shuffle_buffer=60)

    def loader():
        return ShardedLoader(ParquetStream([path], cfg, 16, shuffle, seed=4), 0)

    uninterrupted = [b.user_ids.tolist() for b in loader()]
    assert len(uninterrupted) == 13
    for k in (1, 2, 3, 12):
        resumed = loader()
        resumed.load_state_dict({"epoch": 0, "batches": k, "readers": 1})
        assert [b.user_ids.tolist() for b in resumed] == uninterrupted[k:]
