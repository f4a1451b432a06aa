"""Streaming Parquet loader: reads row groups with pyarrow, validates them, shuffles through a bounded
buffer, and yields `Batch`es built inside the DataLoader workers. Never loads a whole dataset.

Sharding (which rows each rank and each of its readers reads, and how many batches of how many rows
it makes) is `row_groups.ShardGeometry`; its module docstring explains the arithmetic.

Bad rows. Batch boundaries are fixed on input rows; under `data.bad_rows: skip` a batch is smaller by
its skipped rows. A batch whose rows are all bad is not yielded empty: the next non-empty batch of the
same reader is split in two to keep the count (only a reader left with fewer valid rows than batches
fails, with an error).

Resume. `ShardedLoader.state_dict()` is {"epoch", "batches" delivered this epoch, "readers"}; after
`load_state_dict()` the next pass of that epoch starts at exactly the next batch. The DataLoader takes
batches from its workers in turn and every reader makes the same number, so batch t of a rank is batch
t // K of reader t % K (after a resume at batch n, worker w plays reader (w + n) % K so that the turns
still line up). Which rows make each batch is planned from row counts and the seeded RNG alone (row ids
go through the shuffle buffer, rows are read when a batch needs them), so a resumed reader re-plans the
delivered batches without reading them and reads only the row groups holding rows of the batches to come.
Two settings need more: `bucket_by_length` reads the history column of the earlier row groups (their
lengths decide the plan), and `bad_rows` / `bad_files: skip` re-read and re-validate the delivered part
(a batch whose rows were all dropped shifts the ones after it).
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import signal
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import DataConfig
from .batch import Batch, collate
from .row_groups import Segment, SegmentRows, ShardGeometry, list_row_groups, resolve_files, resumed_reader
from .schema import SchemaError, check_rows, history_columns
from .store import EventLog, open_event_log

log = logging.getLogger(__name__)


def read_columns(data: DataConfig, store: bool = False) -> list[str]:
    """The Parquet columns the loader reads: the configured features and the fixed columns (of a store's
    sample file: without the history columns, which come from the event log)."""
    names = [f.name for f in data.features] + [data.label, data.timestamp, data.hist_timestamp, data.user_id]
    if store:
        names = [n for n in names if n not in history_columns(data)]
    return list(dict.fromkeys(names))


class ParquetStream(IterableDataset):
    """Iterable of `Batch`es over one split, for one rank and (inside a DataLoader) one of its workers."""

    def __init__(
        self, files: list[str], data: DataConfig, batch_size: int, shuffle: bool, seed: int = 0,
        rank: int = 0, world_size: int = 1, num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world_size, self.workers = rank, world_size, max(num_workers, 1)
        self.groups, self.skipped_files = list_row_groups(files, data)
        # the event log of a store, opened and checked here (before any batch); workers inherit it
        self.events: EventLog | None = open_event_log(data) if any(g.store for g in self.groups) else None
        self.geometry = ShardGeometry(tuple(self.groups), batch_size, shuffle, seed, rank, world_size, self.workers)
        self.total_rows = self.geometry.total_rows
        self.epoch = 0
        self.skip_batches = 0  # batches of this rank already delivered this epoch (resume)
        self.min_rows = self.geometry.min_rows
        if self.total_rows and not self.min_rows:
            raise ValueError(
                f"{files[0]}{' ...' if len(files) > 1 else ''}: {self.total_rows} rows cannot give every one "
                f"of world_size * num_workers = {world_size * self.workers} readers a row; use fewer workers"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def num_rows(self) -> int:
        """Rows this rank reads per epoch (all ranks: equal +-1)."""
        return self.geometry.num_rows()

    def batches_per_reader(self) -> int:
        return self.geometry.batches_per_reader()

    def num_batches(self) -> int:
        """Batches this rank yields per epoch; the same on every rank (depends on row counts only)."""
        return self.geometry.num_batches()

    def segments(self, k: int) -> list[Segment]:
        """The row ranges reader k of this rank reads this epoch, in order."""
        return self.geometry.segments(self.epoch, k)

    def batch_sizes(self, k: int) -> list[int]:
        """Input rows of each batch of reader k: B, ..., B, then the rest (1 .. B+1)."""
        return self.geometry.batch_sizes(self.epoch, k)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"ParquetStream was built for {self.workers} readers per rank, runs in {workers}")
        reader, done = resumed_reader(worker, workers, self.skip_batches)
        yield from _Reader(self, reader).batches(skip=done)


@dataclass
class _Loaded:
    """Rows of a segment held in memory: `table` and `reasons` (each row's reason to be invalid, "" = valid)
    hold the segment's rows `offsets` (sorted, numbered within the segment)."""

    table: pa.Table
    reasons: np.ndarray
    offsets: np.ndarray

    def rows(self, local: np.ndarray) -> pa.Table:
        return self.table.take(pa.array(np.searchsorted(self.offsets, local)))

    def reasons_of(self, local: np.ndarray) -> np.ndarray:
        return self.reasons[np.searchsorted(self.offsets, local)]

    def only(self, keep: np.ndarray) -> _Loaded:
        """A copy holding only the rows `keep` (a subset of offsets)."""
        at = np.searchsorted(self.offsets, keep)
        return _Loaded(self.table.take(pa.array(at)), self.reasons[at], keep)


class _Reader:
    """Reader k of a rank (its k-th part of the rank's rows) for one epoch, run in the DataLoader worker
    that plays reader k.

    The plan (which input rows make each batch) depends on row counts and the seeded RNG only, plus the
    history lengths under `bucket_by_length`: this reader's rows are numbered 0..n-1 in segment order and
    only these ids go through the shuffle buffer (`_plan`). Rows are read when a batch needs them: a segment
    is read and validated on first use and dropped once every one of its rows is in a batch, so a resumed
    reader reads only the segments that still hold rows of the batches to come."""

    def __init__(self, stream: ParquetStream, k: int) -> None:
        self.stream, self.data = stream, stream.data
        self.k = k
        self.reader = stream.rank * stream.workers + k
        self.rng = np.random.default_rng((stream.seed, stream.epoch, self.reader))
        self.sizes = stream.batch_sizes(k)
        self.segments = stream.segments(k)
        self.numbering = SegmentRows(self.segments)  # this reader's row ids 0..n-1 in segment order
        self.first_id = self.numbering.first_id  # id of each segment's first row
        self.unplaced = self.numbering.counts.copy()  # rows of each segment not yet in a finished batch
        self.loaded: dict[int, _Loaded] = {}  # segments read and not yet placed in batches
        self.pending: dict[int, np.ndarray] = {}  # segment -> which of its rows are not yet placed
        self.lengths: dict[int, np.ndarray] = {}  # segment -> history lengths (bucket_by_length)
        self.planned = 0  # batches planned so far
        self.skip = 0
        self.skipped: Counter = Counter()  # rows dropped since the last batch handed out
        self.files: dict[str, pq.ParquetFile] = {}  # opened once per file, not once per row group

    def batches(self, skip: int) -> Iterator[Batch]:
        self.skip = skip
        for index, ids in enumerate(self._non_empty()):
            if index < skip:  # delivered before the resume point
                self.skipped.clear()
                continue
            batch = collate(self._rows(ids), self.data)
            batch.skipped, self.skipped = dict(self.skipped), Counter()
            yield batch

    def _non_empty(self) -> Iterator[np.ndarray]:
        """Ids of the valid rows of each planned batch; a batch left with none is made up by splitting the
        next non-empty one, so the count stays len(self.sizes). Batches before the resume point are not
        read when no row can be dropped: every row of a delivered batch was valid, or it would have raised."""
        can_drop = self.data.bad_rows == "skip" or self.data.bad_files == "skip"
        unmade = 0  # batches left with no valid row, still to be made up by splitting later ones
        for index, ids in enumerate(self._plan()):
            if index < self.skip and not can_drop:
                self._place(ids)
                yield ids
                continue
            reasons = self._reasons(ids)
            self.skipped.update(reasons[reasons != ""])
            valid = ids[reasons == ""]
            if not valid.size:
                unmade += 1
                self._place(ids)
                continue
            parts = min(unmade + 1, valid.size)
            unmade -= parts - 1
            cuts = [i * valid.size // parts for i in range(parts + 1)]
            for a, b in zip(cuts[:-1], cuts[1:]):
                yield valid[a:b]
            self._place(ids)  # after its batches were built from the loaded segments
        if unmade:
            raise SchemaError(
                f"epoch {self.stream.epoch}, rank {self.stream.rank}, reader {self.k}: {unmade} of "
                f"{len(self.sizes)} "
                "batches have no valid row left after skipping bad rows (data.bad_rows=skip); the split has "
                "fewer valid rows than batches for world_size * num_workers readers"
            )

    def _plan(self) -> Iterator[np.ndarray]:
        """Row ids of each batch of `self.sizes` input rows (sorted), drawn from the shuffle buffer."""
        stream = self.stream
        capacity = max(self.data.shuffle_buffer, stream.batch_size) if stream.shuffle else stream.batch_size
        buffer: list[np.ndarray] = []
        sizes = list(reversed(self.sizes))  # pop() takes the next size
        for segment in range(len(self.segments)):
            buffer.append(self.numbering.ids(segment))
            if sum(len(ids) for ids in buffer) >= capacity:
                yield from self._drain(buffer, sizes, final=False)
        yield from self._drain(buffer, sizes, final=True)

    def _drain(self, buffer: list[np.ndarray], sizes: list[int], final: bool) -> Iterator[np.ndarray]:
        """Cut the next planned batches from the buffer (shuffled when training); leave in it a tail
        smaller than the next batch, unless `final`, when every row must go."""
        if not buffer:
            return
        ids = np.concatenate(buffer)
        buffer.clear()
        n, used, take = len(ids), 0, []
        while sizes and (final or used + sizes[-1] <= n):
            take.append(sizes.pop())
            used += take[-1]
        if final and used != n:
            raise AssertionError(f"reader planned {used} rows but read {n}")  # a bug, not bad input
        if self.stream.shuffle:
            order = self.rng.permutation(n)
            tail, order = order[: n - used], order[n - used:]
            if self.data.bucket_by_length:  # similar history lengths side by side; ties stay random
                length = np.minimum(self._history_lengths(ids), self.data.max_len)  # as collated
                order = order[np.argsort(length[order], kind="stable")]
        else:
            tail, order = np.arange(used, n), np.arange(used)
        if tail.size:
            buffer.append(ids[tail])
        starts = np.cumsum([0, *take])
        batches = list(range(len(take)))
        if self.stream.shuffle and self.data.bucket_by_length:
            self.rng.shuffle(batches)  # buckets in random order, not shortest first
        for i in batches:
            self.planned += 1
            yield np.sort(ids[order[starts[i]:starts[i + 1]]])

    def _place(self, ids: np.ndarray) -> None:
        """These rows are in a finished batch: drop every segment none of whose rows is still to come, and
        keep only the rows still to come of a loaded one mostly used up (rows left in the shuffle buffer's
        tail would otherwise hold a whole row group in memory)."""
        segments = self.numbering.segment_of(ids)
        for seg in np.unique(segments):
            seg = int(seg)
            local = ids[segments == seg] - self.first_id[seg]
            self.unplaced[seg] -= len(local)
            if not self.unplaced[seg]:
                for held in (self.loaded, self.lengths, self.pending):
                    held.pop(seg, None)
                continue
            rows = self.numbering.rows(seg)
            pending = self.pending.setdefault(seg, np.ones(rows, dtype=bool))
            pending[local] = False
            loaded = self.loaded.get(seg)
            if loaded is not None and self.unplaced[seg] * 4 <= len(loaded.offsets):
                self.loaded[seg] = loaded.only(np.flatnonzero(pending))

    def _reasons(self, ids: np.ndarray) -> np.ndarray:
        """Why each of these rows is invalid ("" = valid), reading their segments if needed."""
        segments = self.numbering.segment_of(ids)
        return np.concatenate([self._load(int(seg)).reasons_of(ids[segments == seg] - self.first_id[seg])
                               for seg in np.unique(segments)]) if ids.size else np.zeros(0, dtype=object)

    def _rows(self, ids: np.ndarray) -> pa.Table:
        """The rows with these (sorted) ids, in that order."""
        segments = self.numbering.segment_of(ids)
        pieces = [self._load(int(seg)).rows(ids[segments == seg] - self.first_id[seg]) for seg in np.unique(segments)]
        return pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces, promote_options="permissive")

    def _history_lengths(self, ids: np.ndarray) -> np.ndarray:
        """History length of each of these rows. Before the resume point only that column is read (of a store's
        rows: the user and request time, whose lengths come from the event log's index)."""
        segments = self.numbering.segment_of(ids)
        out = np.zeros(len(ids), dtype=np.int64)
        for seg in np.unique(segments):
            seg = int(seg)
            if seg not in self.lengths:
                self.lengths[seg] = self._segment_lengths(seg)
            out[segments == seg] = self.lengths[seg][ids[segments == seg] - self.first_id[seg]]
        return out

    def _segment_lengths(self, seg: int) -> np.ndarray:
        rows = self.numbering.rows(seg)
        segment = self.segments[seg]
        loaded = self._load(seg) if self.planned >= self.skip else self.loaded.get(seg)  # rows wanted
        if loaded is not None and len(loaded.offsets) == rows:
            table = loaded.table
        elif segment.group.store:
            table = self._read_table(segment, [self.data.user_id, self.data.timestamp])
            return np.zeros(rows, dtype=np.int64) if table is None else self.stream.events.history_lengths(table)
        else:
            table = self._read_table(segment, [self.data.hist_timestamp])
        column = None if table is None else table.column(self.data.hist_timestamp)
        if column is None or not pa.types.is_list(column.type):  # unreadable (bad_files=skip)
            return np.zeros(rows, dtype=np.int64)
        return pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)

    def _load(self, seg: int) -> _Loaded:
        """A segment's rows, read and validated on first use."""
        if seg not in self.loaded:
            table, reasons = self._read(self.segments[seg])
            self.loaded[seg] = _Loaded(table, reasons, np.arange(table.num_rows))
        return self.loaded[seg]

    def _read_table(self, segment: Segment, columns: list[str]) -> pa.Table | None:
        """These columns of a segment's rows; None when they cannot be read (logged, or SchemaError under
        data.bad_files=error)."""
        group = segment.group
        first_row = group.first_row + segment.start
        try:
            if group.path not in self.files:
                self.files[group.path] = pq.ParquetFile(group.path)
            table = self.files[group.path].read_row_group(group.index, columns=columns)
        except (OSError, pa.ArrowException) as err:
            last_row = first_row + segment.stop - segment.start - 1
            message = f"{group.path}: rows {first_row}..{last_row} (row group {group.index}) cannot be read ({err})"
            if self.data.bad_files == "error":
                raise SchemaError(message) from err
            log.warning("skipping unreadable rows (data.bad_files=skip): %s", message)
            return None
        return table.slice(segment.start, segment.stop - segment.start).combine_chunks()

    def _read(self, segment: Segment) -> tuple[pa.Table, np.ndarray]:
        """Rows of a segment (in the inline schema: a store's rows get their histories rebuilt from the event
        log) and why each is invalid ("" = valid)."""
        group, data = segment.group, self.data
        rows = segment.stop - segment.start
        table = self._read_table(segment, read_columns(data, store=group.store))
        if table is None:
            schema = self.files[group.path].schema_arrow if group.path in self.files else None
            listed = set(history_columns(data)) if group.store else set()
            columns = {c: pa.nulls(rows, pa.list_(pa.int64()) if c in listed else schema.field(c).type if schema
                                   else pa.null()) for c in read_columns(data)}
            return pa.table(columns), np.full(rows, "unreadable", dtype=object)
        where = None
        if group.store:
            table, events = self.stream.events.rebuild(table)
            where = lambda column, value: f" (event: {self.stream.events.where(int(events[value]))})"  # noqa: E731
        if not rows:
            return table, np.zeros(0, dtype=object)
        reasons = check_rows(table.to_batches()[0], data, group.path,
                         group.first_row + segment.start, skip=data.bad_rows == "skip", where=where)
        return table, reasons


class ShardedLoader:
    """What the trainer iterates: `Batch`es of one rank for one epoch at a time, built in DataLoader
    workers; `num_batches()` per epoch (equal on every rank), resumable at the next batch."""

    def __init__(self, stream: ParquetStream, num_workers: int) -> None:
        self.stream, self.num_workers = stream, num_workers
        self.delivered = 0  # batches handed out this epoch
        self.skipped: Counter = Counter({"files": len(stream.skipped_files)} if stream.skipped_files else {})
        self._resume: tuple[int, int] | None = None

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its row group order and shuffle); a loaded resume point of another epoch is
        dropped."""
        if self._resume and self._resume[0] != epoch:
            self._resume = None
        self.stream.set_epoch(epoch)

    def num_batches(self) -> int:
        return self.stream.num_batches()

    def num_rows(self) -> int:
        return self.stream.num_rows()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.delivered, "readers": self.stream.world_size * self.stream.workers}

    def load_state_dict(self, state: dict) -> None:
        readers = self.stream.world_size * self.stream.workers
        if state["readers"] != readers:
            raise ValueError(
                f"loader state was saved with {state['readers']} readers (world_size * num_workers), this "
                f"loader has {readers}: the batches would differ; resume with the same world size and "
                "data.num_workers"
            )
        self._resume = (int(state["epoch"]), int(state["batches"]))
        self.stream.set_epoch(self._resume[0])
        self.delivered = self._resume[1]

    def __iter__(self) -> Iterator[Batch]:
        skip = self._resume[1] if self._resume and self._resume[0] == self.epoch else 0
        self._resume = None
        self.stream.skip_batches = skip
        self.delivered = skip
        loader = DataLoader(
            self.stream, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
            persistent_workers=False, prefetch_factor=4 if self.num_workers else None,
            generator=torch.Generator(),  # its own: starting an epoch must not draw from the global RNG
            worker_init_fn=_ignore_stop_signals if self.num_workers else None,
        )
        if self.num_workers:
            _end_workers_at_exit()
        batches = iter(loader)
        try:
            for batch in batches:
                self.delivered += 1
                self.skipped.update(batch.skipped)
                yield batch
        finally:  # also when the consumer stops early (an evaluation's last batch, a pipeline emptied)
            _end_workers(batches)

    def __len__(self) -> int:
        return self.num_batches()

    def skipped_on_all_ranks(self) -> dict[str, int]:
        """`skipped` summed over every rank (a collective: every rank must call it); this rank's alone
        without a process group."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return dict(self.skipped)
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, dict(self.skipped))
        return dict(sum((Counter(p) for p in parts), Counter()))


def _identity(batch: Batch) -> Batch:
    return batch


def _ignore_stop_signals(_worker: int) -> None:
    """Workers ignore SIGINT and SIGTERM, which a terminal, torchrun (to the rank's process group) or Slurm
    (to every process) sends with the one to the training process: that one stops at a step boundary and ends
    its workers itself (components/preemption.py), while a worker that died of the signal would fail the step
    it is finishing."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


FEEDER_JOIN_S = 5.0  # at most this long for a finished iterator's queue threads to exit (they exit at once)


def _end_workers(batches: Iterator) -> None:
    """End a DataLoader iterator's workers and wait for the threads that fed them to exit.

    The DataLoader's shutdown closes each worker's index queue without waiting for its feeder thread. A thread
    still exiting when the next iterator forks its workers can leave the new worker deadlocked before it runs
    any code: CPython 3.11's after-fork handler waits for the runtime's thread-state lock, which the exiting
    thread held at the fork (seen as a rare hang of a 2-rank job after a resume, the worker's stack in
    `PyOS_AfterFork_Child`; tests/data/test_loader.py). Joining those threads here means no fork of ours
    meets one exiting. Private attributes of the pinned torch (`_shutdown_workers`, `_index_queues`) and of
    multiprocessing's Queue (`_thread`), read with defaults: without them this does what the DataLoader did."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is None:  # no workers
        return
    shutdown()
    for queue in getattr(batches, "_index_queues", ()):
        thread = getattr(queue, "_thread", None)
        if thread is not None:
            thread.join(timeout=FEEDER_JOIN_S)


@functools.cache
def _end_workers_at_exit() -> None:
    """Registered once: at interpreter exit, SIGKILL the workers an error left running. multiprocessing's own
    exit hook ends daemon children with SIGTERM, which they ignore, then waits for them; this one is registered
    later, so it runs first."""

    def end() -> None:
        children = multiprocessing.active_children()
        if children:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # not the DataLoader's "worker killed" error
            for child in children:
                child.kill()

    atexit.register(end)


def build_dataloader(
    data: DataConfig, split: str, train: bool, seed: int, rank: int = 0, world_size: int = 1
) -> ShardedLoader:
    """The loader of one split for one rank: shuffled (and length-bucketed if configured) when training. The
    config's table sizes must be resolved (`machine.resolve`, or `data.vocab.resolve_num_embeddings`)."""
    auto = [name for name, table in data.tables.items() if table.num_embeddings == "auto"]
    if auto:
        raise ValueError(f"data.tables {auto}: num_embeddings is still 'auto'; resolve the config first "
                         "(longer_train.machine.resolve)")
    stream = ParquetStream(
        resolve_files(data.root, getattr(data, split)), data,
        batch_size=data.batch_size if train else data.eval_batch_size,
        shuffle=train and data.shuffle_buffer > 0, seed=seed, rank=rank, world_size=world_size,
        num_workers=data.num_workers,
    )
    return ShardedLoader(stream, data.num_workers)
