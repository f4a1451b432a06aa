"""The streaming loader: every row once per epoch across ranks and workers, equal batch counts on every
rank, the most recent max_len events, seeded shuffling, length buckets, resume at the next batch, and
schema errors before any batch."""

import multiprocessing.queues
import threading
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_configs import data_config

from longer_train.config import FeatureConfig
from longer_train.data.loader import ParquetStream, ShardedLoader
from longer_train.data.row_groups import resolve_files
from longer_train.data.schema import SchemaError
from longer_train.data.store import read_inline
from longer_train.datasets import synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    meta = synthetic.generate(root, users=150, max_len=40, seed=2)
    return root, meta


@pytest.fixture(scope="module")
def small_groups(dataset, tmp_path_factory):
    """The train split rewritten as two files of uneven row groups (so readers split row groups)."""
    root, meta = dataset
    table = read_inline(root, "train", _cfg(meta))  # inline rows (the generator writes a sequence store)
    folder = tmp_path_factory.mktemp("groups")
    cut = table.num_rows // 3
    pq.write_table(table.slice(0, cut), folder / "a.parquet", row_group_size=97)
    pq.write_table(table.slice(cut), folder / "b.parquet", row_group_size=211)
    return [str(folder / "a.parquet"), str(folder / "b.parquet")], table


def _cfg(meta, max_len=40, root=None, **kw):
    vocab = meta["vocab"]
    cfg = data_config(
        {"item": vocab["items"], "category": vocab["categories"], "action": vocab["actions"],
         "user": vocab["users"], "segment": vocab["user_segments"]},
        [FeatureConfig("user_segment", "user", "segment"), FeatureConfig("user_activity", "dense", None)],
    )
    cfg.max_len = max_len
    cfg.root = str(root) if root else cfg.root  # the store's root, where its event log is
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def _loader(files, cfg, batch_size=32, shuffle=True, seed=0, rank=0, world_size=1, num_workers=0):
    stream = ParquetStream(files, cfg, batch_size, shuffle, seed, rank, world_size, num_workers)
    return ShardedLoader(stream, num_workers)


def _keys(batch) -> list[tuple]:
    """(user, request time proxy, candidate, label) per row: identifies a row of the synthetic data."""
    hist = batch.per_id["hist_item_id"]
    cuts = np.cumsum(hist.lengths().numpy())[:-1]
    events = np.split(hist.values().numpy(), cuts)
    items = batch.per_id["item_id"].values().tolist()
    return [(int(u), items[i], tuple(events[i].tolist()), float(batch.labels[i]))
            for i, u in enumerate(batch.user_ids)]


def _table_keys(table: pa.Table, max_len: int = 40) -> Counter:
    return Counter((r["user_id"], r["item_id"], tuple(r["hist_item_id"][-max_len:]), r["label"])
                   for r in table.to_pylist())


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_once_with_its_most_recent_events(dataset, shuffle):
    root, meta = dataset
    cfg = _cfg(meta, max_len=7, root=root, shuffle_buffer=100)
    files = resolve_files(str(root), "train")
    expected = Counter(
        (r["user_id"], r["item_id"], tuple(r["hist_item_id"][-7:]),
         tuple(r["timestamp"] - t for t in r["hist_timestamp"][-7:]), r["label"])
        for r in read_inline(root, "train", _cfg(meta)).to_pylist()
    )
    produced = Counter()
    for batch in _loader(files, cfg, batch_size=32, shuffle=shuffle):
        hist = batch.per_id["hist_item_id"]
        cuts = np.cumsum(hist.lengths().numpy())[:-1]
        events_per_row = np.split(hist.values().numpy(), cuts)
        diffs_per_row = np.split(batch.time_diff.numpy(), cuts)
        # counted on the host for the dense model (no sync), and kept there when the batch moves
        assert batch.history_lengths.tolist() == hist.lengths().tolist()
        assert batch.to(torch.device("cpu")).history_lengths is batch.history_lengths
        assert batch.longest == int(hist.lengths().max())
        for i, (events, diffs) in enumerate(zip(events_per_row, diffs_per_row)):
            produced[(int(batch.user_ids[i]), int(batch.per_id["item_id"].values()[i]), tuple(events.tolist()),
                      tuple(diffs.tolist()), float(batch.labels[i]))] += 1
    assert max(len(k[2]) for k in produced) == 7
    assert produced == expected


def test_two_ranks_two_workers_see_every_row_once_in_equal_batch_counts(dataset, small_groups):
    _, meta = dataset
    files, table = small_groups
    cfg = _cfg(meta, shuffle_buffer=300)
    for epoch in (0, 1):
        produced, counts, sizes = Counter(), [], []
        for rank in (0, 1):
            loader = _loader(files, cfg, batch_size=64, rank=rank, world_size=2, num_workers=2)
            loader.set_epoch(epoch)
            batches = list(loader)
            assert all(b.size > 0 for b in batches)
            counts.append((len(batches), loader.num_batches()))
            sizes.append(sum(b.size for b in batches))
            for b in batches:
                produced.update(_keys(b))
        assert counts[0] == counts[1] and counts[0][0] == counts[0][1]
        assert abs(sizes[0] - sizes[1]) <= 1
        assert produced == _table_keys(table)


def _feeders() -> set:
    return {t for t in threading.enumerate() if t.name == "QueueFeederThread"}


def test_an_epoch_leaves_no_worker_queue_thread_behind(dataset, small_groups, monkeypatch):
    """Each epoch's workers are forked from the training process; a queue thread of the previous epoch's
    workers still exiting at that fork can deadlock the new worker (loader.py `_end_workers`). So once an epoch
    ends — or its consumer stops early — none of its queue threads is left, even one slow to exit (here each
    lingers 0.3 s after its queue closed: without the join they are still alive when the next epoch forks)."""
    _, meta = dataset
    files, _ = small_groups
    feed = multiprocessing.queues.Queue._feed

    def slow_feed(*args):
        feed(*args)
        time.sleep(0.3)

    monkeypatch.setattr(multiprocessing.queues.Queue, "_feed", staticmethod(slow_feed))
    before = _feeders()
    loader = _loader(files, _cfg(meta), batch_size=64, num_workers=2)
    assert len(list(loader)) > 2
    assert _feeders() == before
    batches = iter(loader)
    next(batches)
    assert _feeders() - before  # the workers' queues are being fed
    batches.close()  # the consumer stops early
    assert _feeders() == before


@pytest.mark.parametrize("rows", [1000, 1001, 1003, 1100])
def test_batch_count_is_equal_on_every_rank_for_uneven_splits(dataset, small_groups, rows):
    _, meta = dataset
    files, table = small_groups
    path = str(small_groups[0][0]).replace("a.parquet", f"uneven{rows}.parquet")
    pq.write_table(table.slice(0, rows), path, row_group_size=97)
    cfg = _cfg(meta, shuffle_buffer=0)
    streams = [ParquetStream([path], cfg, 100, False, rank=r, world_size=3, num_workers=2) for r in range(3)]
    for stream in streams:
        plans = [stream.batch_sizes(w) for w in range(2)]
        assert len(plans[0]) == len(plans[1]) == stream.num_batches() // 2 == streams[0].num_batches() // 2
        assert all(1 <= size <= 101 for plan in plans for size in plan)
    assert sum(sum(map(sum, (s.batch_sizes(w) for w in range(2)))) for s in streams) == rows


def test_shuffle_is_seeded_and_changes_with_the_epoch(dataset):
    root, meta = dataset
    cfg = _cfg(meta, max_len=7, root=root, shuffle_buffer=100)
    files = resolve_files(str(root), "train")

    def first(seed, epoch=0):
        loader = _loader(files, cfg, 16, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader)).user_ids.tolist()

    assert first(0) == first(0) and first(0) != first(1) and first(0) != first(0, epoch=1)


def test_length_buckets_cut_padding_and_keep_every_row(dataset):
    root, meta = dataset
    files = resolve_files(str(root), "train")
    table = read_inline(root, "train", _cfg(meta))

    def padding(bucket):
        cfg = _cfg(meta, root=root, shuffle_buffer=2000, bucket_by_length=bucket)
        produced, pad = Counter(), 0
        for b in _loader(files, cfg, batch_size=32):
            lengths = b.per_id["hist_item_id"].lengths().numpy()
            pad += int(lengths.max() * len(lengths) - lengths.sum())
            produced.update(_keys(b))
        assert produced == _table_keys(table)
        return pad

    assert padding(True) < 0.5 * padding(False)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("bucket", [False, True])
def test_resume_continues_with_exactly_the_next_batch(dataset, small_groups, num_workers, bucket):
    _, meta = dataset
    files, _ = small_groups
    cfg = _cfg(meta, shuffle_buffer=300, bucket_by_length=bucket)

    def rows(batches):
        return [(b.user_ids.tolist(), b.labels.tolist(), b.per_id.values().tolist()) for b in batches]

    full = _loader(files, cfg, 48, rank=1, world_size=2, num_workers=num_workers)
    full.set_epoch(3)
    uninterrupted = rows(full)
    for k in (0, 1, 5, len(uninterrupted) - 1):
        first = _loader(files, cfg, 48, rank=1, world_size=2, num_workers=num_workers)
        first.set_epoch(3)
        it = iter(first)
        head = [next(it) for _ in range(k)]
        state = first.state_dict()
        assert state["batches"] == k and state["epoch"] == 3
        resumed = _loader(files, cfg, 48, rank=1, world_size=2, num_workers=num_workers)
        resumed.load_state_dict(state)
        resumed.set_epoch(3)
        assert rows(head) + rows(resumed) == uninterrupted


def test_resume_refuses_another_reader_layout(dataset, small_groups):
    _, meta = dataset
    files, _ = small_groups
    state = _loader(files, _cfg(meta), num_workers=2).state_dict()
    with pytest.raises(ValueError, match="num_workers"):
        _loader(files, _cfg(meta), num_workers=1).load_state_dict(state)


def test_too_few_rows_for_the_readers_is_an_error(dataset, tmp_path):
    root, meta = dataset
    pq.write_table(read_inline(root, "valid", _cfg(meta)).slice(0, 3), tmp_path / "tiny.parquet")
    with pytest.raises(ValueError, match="fewer workers"):
        ParquetStream([str(tmp_path / "tiny.parquet")], _cfg(meta), 16, False, world_size=2, num_workers=2)


def test_wrong_column_type_fails_before_training(dataset, tmp_path):
    root, meta = dataset
    table = read_inline(root, "valid", _cfg(meta))
    bad = table.set_column(table.schema.get_field_index("item_id"), "item_id", table["item_id"].cast(pa.int32()))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SchemaError, match=r"bad\.parquet.*item_id"):
        ParquetStream([str(tmp_path / "bad.parquet")], _cfg(meta, 7), 16, False)


@pytest.mark.parametrize("bucket", [False, True])
def test_resume_reads_only_the_row_groups_of_the_batches_to_come(dataset, small_groups, monkeypatch, bucket):
    """A resumed reader re-plans the delivered batches from row counts and the seed without reading them:
    resuming at the last batch reads a few row groups, not the epoch again (with length buckets, only the
    history column of the earlier ones)."""
    _, meta = dataset
    files, _ = small_groups
    cfg = _cfg(meta, shuffle_buffer=300, bucket_by_length=bucket)
    reads = Counter()
    read_row_group = pq.ParquetFile.read_row_group

    def counted(self, i, columns=None, **kw):
        reads["all columns" if columns is None or len(columns) > 1 else "one column"] += 1
        return read_row_group(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted)
    full = _loader(files, cfg, 48)
    full.set_epoch(1)
    batches = [b.user_ids.tolist() for b in full]
    epoch_reads, reads = dict(reads), Counter()
    resumed = _loader(files, cfg, 48)
    resumed.load_state_dict({**full.state_dict(), "batches": len(batches) - 1})
    resumed.set_epoch(1)
    assert [b.user_ids.tolist() for b in resumed] == batches[-1:]
    print(f"row group reads, whole epoch: {epoch_reads}; resumed at the last batch: {dict(reads)}")
    assert epoch_reads == {"all columns": len(full.stream.segments(0))} == {"all columns": 12}
    assert reads["all columns"] <= 3
    assert reads["one column"] <= (12 if bucket else 0)


def test_a_reader_holds_about_a_shuffle_buffer_of_rows(dataset, small_groups):
    """Rows left in the shuffle buffer's tail do not keep their whole row group in memory: the rows a reader
    holds stay within the buffer plus the row group being cut, over a whole epoch."""
    from longer_train.data.loader import _Reader

    _, meta = dataset
    files, table = small_groups
    stream = ParquetStream(files, _cfg(meta, shuffle_buffer=300), 16, shuffle=True)
    reader = _Reader(stream, 0)
    held = [sum(len(rows.offsets) for rows in reader.loaded.values()) for _ in reader.batches(skip=0)]
    assert len(held) == stream.num_batches() and not reader.loaded  # everything released at the end
    print(f"rows held: max {max(held)}, mean {np.mean(held):.0f} (buffer 300, row groups of 97 and 211 rows)")
    assert max(held) <= 300 + 211
