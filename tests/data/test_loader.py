"""The streaming loader: every row once per epoch, the most recent max_len events, batches that match
the Parquet rows (KJT layout, time differences, labels), and schema errors before any batch."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_configs import data_config

from longer_train.config import FeatureConfig
from longer_train.data import synthetic
from longer_train.data.loader import ParquetStream, resolve_files
from longer_train.data.schema import SchemaError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    meta = synthetic.generate(root, users=150, max_len=40, seed=2)
    return root, meta


def _cfg(meta, max_len, **kw):
    vocab = meta["vocab"]
    cfg = data_config(
        {"item": vocab["items"], "category": vocab["categories"], "action": vocab["actions"],
         "user": vocab["users"], "segment": vocab["user_segments"]},
        [FeatureConfig("user_segment", "user", "segment"), FeatureConfig("user_activity", "dense", None)],
    )
    cfg.max_len = max_len
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_with_its_most_recent_events(dataset, shuffle):
    root, meta = dataset
    cfg = _cfg(meta, max_len=7, shuffle_buffer=100)
    files = resolve_files(str(root), "train")
    expected = Counter(
        (r["user_id"], r["item_id"], tuple(r["hist_item_id"][-7:]),
         tuple(r["timestamp"] - t for t in r["hist_timestamp"][-7:]), r["label"])
        for r in pq.read_table(files).to_pylist()
    )
    produced = Counter()
    for batch in ParquetStream(files, cfg, batch_size=32, shuffle=shuffle, seed=0):
        hist = batch.per_id["hist_item_id"]
        cuts = np.cumsum(hist.lengths().numpy())[:-1]
        events_per_row = np.split(hist.values().numpy(), cuts)
        diffs_per_row = np.split(batch.time_diff.numpy(), cuts)
        for i, (events, diffs) in enumerate(zip(events_per_row, diffs_per_row)):
            produced[(int(batch.user_ids[i]), int(batch.per_id["item_id"].values()[i]), tuple(events.tolist()),
                      tuple(diffs.tolist()), float(batch.labels[i]))] += 1
    assert max(len(k[2]) for k in produced) == 7
    assert produced == expected


def test_shuffle_is_seeded(dataset):
    root, meta = dataset
    cfg = _cfg(meta, max_len=7, shuffle_buffer=100)
    files = resolve_files(str(root), "train")
    first = lambda seed: next(iter(ParquetStream(files, cfg, 16, True, seed=seed))).user_ids.tolist()
    assert first(0) == first(0) and first(0) != first(1)


def test_wrong_column_type_fails_before_training(dataset, tmp_path):
    root, meta = dataset
    table = pq.read_table(resolve_files(str(root), "valid"))
    bad = table.set_column(table.schema.get_field_index("item_id"), "item_id", table["item_id"].cast(pa.int32()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match=r"bad\.parquet.*item_id"):
        ParquetStream([str(tmp_path / "bad.parquet")], _cfg(meta, 7), 16, False)
