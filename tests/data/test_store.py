"""The sequence store: the loader yields exactly the batches of the inline layout for the same data (shuffled,
length-bucketed, 2 ranks x 2 workers, resumed mid-epoch), histories are the newest max_len events strictly before
the request, the event log is memory-mapped when written by us and read either way, and bad input is an error
naming file, row and column (or a counted skip)."""

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from data_configs import data_config

from longer_train.config import FeatureConfig
from longer_train.data.loader import ParquetStream, ShardedLoader
from longer_train.data.row_groups import resolve_files
from longer_train.data.schema import SchemaError, history_columns
from longer_train.data.store import EventLog, open_event_log, read_inline
from longer_train.datasets import synthetic

MAX_LEN = 12


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    meta = synthetic.generate(root, users=150, max_len=40, seed=2)  # users without events too
    return root, meta


def _cfg(root, meta, **kw):
    v = meta["vocab"]
    cfg = data_config({"item": v["items"], "category": v["categories"], "action": v["actions"], "user": v["users"],
                       "segment": v["user_segments"]},
                      [FeatureConfig("user_segment", "user", "segment"), FeatureConfig("user_activity", "dense", None)])
    cfg.root, cfg.max_len, cfg.shuffle_buffer = str(root), MAX_LEN, 200
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def _brute_force(rows: pa.Table, events: pa.Table, cfg) -> pa.Table:
    """Inline rows built the slow way: for each row, its user's events with a smaller time, newest max_len."""
    by_user: dict[int, list[dict]] = {}
    for e in events.to_pylist():
        by_user.setdefault(e["user_id"], []).append(e)
    lists = {c: [] for c in history_columns(cfg)}
    for r in rows.to_pylist():
        hist = [e for e in by_user.get(r["user_id"], []) if e["hist_timestamp"] < r["timestamp"]][-cfg.max_len:]
        for c in lists:
            lists[c].append([e[c] for e in hist])
    for c, values in lists.items():
        rows = rows.append_column(c, pa.array(values, pa.list_(pa.int64())))
    return rows


@pytest.fixture(scope="module")
def layouts(store, tmp_path_factory):
    """The train split as two files of uneven row groups, once as store sample rows (with the store's event
    log) and once inline with brute-force histories: the same rows in the same row groups."""
    root, meta = store
    cfg = _cfg(root, meta)
    rows = pq.read_table(resolve_files(str(root), "train"))
    events = pq.read_table(root / "events")
    folder = tmp_path_factory.mktemp("layouts")
    files = {"store": [], "inline": []}
    cut = rows.num_rows // 3
    for name, part, group in (("a", rows.slice(0, cut), 97), ("b", rows.slice(cut), 211)):
        for layout, table in (("store", part), ("inline", _brute_force(part, events, cfg))):
            path = folder / f"{layout}-{name}.parquet"
            pq.write_table(table, path, row_group_size=group)
            files[layout].append(str(path))
    return files, cfg


def _tensors(batch) -> tuple:
    pooled = batch.pooled
    return (batch.per_id.keys(), batch.per_id.values().tolist(), batch.per_id.lengths().tolist(),
            pooled.keys(), pooled.values().tolist(), pooled.lengths().tolist(), batch.time_diff.tolist(),
            batch.dense.tolist(), batch.labels.tolist(), batch.user_ids.tolist(), batch.skipped)


def _loader(files, cfg, rank=0, world_size=1, workers=0, batch=48, shuffle=True):
    return ShardedLoader(ParquetStream(files, cfg, batch, shuffle, seed=3, rank=rank, world_size=world_size,
                                       num_workers=workers), workers)


def test_rebuilt_histories_are_the_newest_events_strictly_before_the_request(store):
    root, meta = store
    cfg = _cfg(root, meta)
    rows = pq.read_table(resolve_files(str(root), "train"))
    expected = _brute_force(rows, pq.read_table(root / "events"), cfg)
    assert read_inline(root, "train", cfg).equals(expected)
    lengths = pc.list_value_length(expected["hist_timestamp"]).to_numpy()
    assert lengths.max() == MAX_LEN and (lengths == 0).any()  # cut rows and empty histories both occur


@pytest.mark.parametrize("bucket", [False, True])
def test_store_and_inline_give_identical_batches_on_2_ranks_x_2_workers(layouts, bucket):
    files, cfg = layouts
    cfg.bucket_by_length = bucket
    for rank in (0, 1):
        out = {}
        for layout in ("store", "inline"):
            loader = _loader(files[layout], cfg, rank=rank, world_size=2, workers=2)
            loader.set_epoch(1)
            out[layout] = [_tensors(b) for b in loader]
        assert len(out["store"]) == loader.num_batches() > 4
        assert out["store"] == out["inline"]


@pytest.mark.parametrize("bucket", [False, True])
def test_store_resumes_mid_epoch_with_exactly_the_next_batch(layouts, bucket):
    files, cfg = layouts
    cfg.bucket_by_length = bucket
    full = _loader(files["inline"], cfg, rank=1, world_size=2, workers=2)
    full.set_epoch(2)
    uninterrupted = [_tensors(b) for b in full]
    for k in (1, len(uninterrupted) // 2, len(uninterrupted) - 1):
        first = _loader(files["store"], cfg, rank=1, world_size=2, workers=2)
        first.set_epoch(2)
        it = iter(first)
        head = [_tensors(next(it)) for _ in range(k)]
        resumed = _loader(files["store"], cfg, rank=1, world_size=2, workers=2)
        resumed.load_state_dict(first.state_dict())
        resumed.set_epoch(2)
        assert head + [_tensors(b) for b in resumed] == uninterrupted


def test_resume_reads_only_the_sample_row_groups_of_the_batches_to_come(layouts, monkeypatch):
    """The event log is memory-mapped: a resume at the last batch reads a few row groups of sample rows and no
    row group of the event log (with length buckets, only the user and request time of the earlier ones)."""
    files, cfg = layouts
    cfg.bucket_by_length = True
    loader = _loader(files["store"], cfg)
    batches = [b.user_ids.tolist() for b in loader]
    reads = Counter()
    read_row_group = pq.ParquetFile.read_row_group

    def counted(self, i, columns=None, **kw):
        reads[tuple(columns or ())] += 1
        return read_row_group(self, i, columns=columns, **kw)

    resumed = _loader(files["store"], cfg)  # opening the log read its sorted user column once, before this
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    resumed.load_state_dict({**loader.state_dict(), "batches": len(batches) - 1})
    assert [b.user_ids.tolist() for b in resumed] == batches[-1:]
    print(f"row group reads resuming at the last batch: {dict(reads)}")
    assert not any(set(columns) & set(history_columns(cfg)) for columns in reads)  # no event log read
    assert sum(n for columns, n in reads.items() if len(columns) > 2) <= 3
    assert set(reads) - {(cfg.user_id, cfg.timestamp)} == {tuple(c for c in reads if len(c) > 2)[0]}


def test_the_event_log_is_memory_mapped_and_a_compressed_copy_reads_the_same(store, tmp_path):
    root, meta = store
    cfg = _cfg(root, meta)
    mapped = open_event_log(cfg)
    assert len(mapped.plain) == len(mapped.chunks) * len(history_columns(cfg))  # every value column mapped
    events = pq.read_table(root / "events")
    # snappy, dictionary, many pages; row groups of 7 events, so users span several of them
    pq.write_table(events, tmp_path / "events.parquet", row_group_size=7)
    copy = EventLog([str(tmp_path / "events.parquet")], cfg)
    assert not copy.plain and len(copy.chunks) > 1
    rows = pq.read_table(resolve_files(str(root), "test"))
    assert copy.rebuild(rows)[0].equals(mapped.rebuild(rows)[0])


def _write_events(tmp_path, events: pa.Table) -> str:
    folder = tmp_path / "events"
    folder.mkdir(parents=True)
    pq.write_table(events, folder / "part-00000.parquet", row_group_size=500)
    return str(folder)


def test_unsorted_event_logs_are_errors_naming_file_row_and_column(store, tmp_path):
    root, meta = store
    events = pq.read_table(root / "events")
    users, ts = events["user_id"].to_numpy().copy(), events["hist_timestamp"].to_numpy().copy()
    row = int(np.flatnonzero(users[1:] == users[:-1])[700]) + 1  # an event with a same-user predecessor
    cfg = _cfg(root, meta)
    swapped = users.copy()
    swapped[[row - 1, row]] = users[row] + 1, users[row]  # a user id goes down
    cfg.events = _write_events(tmp_path / "u", events.set_column(0, "user_id", pa.array(swapped)))
    with pytest.raises(SchemaError, match=rf"part-00000\.parquet: row {row}, column 'user_id': .*sorted by user"):
        open_event_log(cfg)
    early = ts.copy()
    early[row] = ts[row - 1] - 1
    cfg.events = _write_events(tmp_path / "t", events.set_column(1, "hist_timestamp", pa.array(early)))
    with pytest.raises(SchemaError, match=rf"row {row}, column 'hist_timestamp': event at .*sorted by user, then time"):
        open_event_log(cfg)


def test_missing_log_or_column_is_an_error(store, tmp_path):
    root, meta = store
    files = resolve_files(str(root), "valid")
    cfg = _cfg(root, meta, events="nowhere")
    with pytest.raises(SchemaError, match="nowhere.*need the event log"):
        ParquetStream(files, cfg, 16, False)
    cfg.events = _write_events(tmp_path, pq.read_table(root / "events").drop_columns(["hist_action"]))
    with pytest.raises(SchemaError, match="missing column 'hist_action' .*event log"):
        ParquetStream(files, cfg, 16, False)


@pytest.mark.parametrize("skip", [False, True])
def test_a_bad_event_id_names_the_sample_row_and_the_event_or_is_skipped(store, tmp_path, skip):
    root, meta = store
    cfg = _cfg(root, meta, bad_rows="skip" if skip else "error")
    rows = pq.read_table(resolve_files(str(root), "valid"))
    events = pq.read_table(root / "events")
    rebuilt, index = open_event_log(cfg).rebuild(rows)
    lengths = pc.list_value_length(rebuilt["hist_item_id"]).to_numpy()
    row = int(np.flatnonzero(lengths)[3])
    event = int(index[lengths[:row].sum() + lengths[row] - 1])  # the newest event of that row's history
    items = events["hist_item_id"].to_numpy().copy()
    items[event] = -7
    cfg.events = _write_events(tmp_path, events.set_column(2, "hist_item_id", pa.array(items)))
    using = [r for r in range(rows.num_rows) if event in index[lengths[:r].sum(): lengths[:r + 1].sum()]]
    if not skip:
        with pytest.raises(SchemaError, match=rf"row {using[0]}, column 'hist_item_id': id -7 is outside .*"
                                              rf"\(event: .*part-00000\.parquet row {event}\)"):
            list(_loader(resolve_files(str(root), "valid"), cfg, shuffle=False))
        return
    loader = _loader(resolve_files(str(root), "valid"), cfg, shuffle=False)
    assert sum(b.size for b in loader) == rows.num_rows - len(using)
    assert loader.skipped == {"negative_id": len(using)}
