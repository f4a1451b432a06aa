"""Streaming Parquet loader: reads row groups with pyarrow, validates them, shuffles through a bounded
buffer, and yields `Batch`es built inside the DataLoader workers. Never loads a whole dataset.

Sharding. Each epoch the row groups of all files are put in one (seeded, per-epoch) order and read as
one virtual sequence of T rows. Rank r takes rows [r*T//W, (r+1)*T//W) (W ranks: equal to +-1 row), and
worker k of its K readers takes an equal (+-1) sub-range of that, so every row is read once per epoch and
row groups at a boundary are shared by two readers. Every reader holds m rows with m in {p, p+1},
p = T // (W*K), and makes exactly ceil(p / B) batches (B = batch size): all of B rows except the last,
which holds the rest (at most B+1). So every rank yields K * ceil(p / B) batches (`num_batches()`), a
function of row counts only: an uneven split never leaves one rank short of a batch (which would hang
the embedding all-to-all); TorchRec accepts batch sizes that differ by a row between ranks.

Bad rows. Batch boundaries are fixed on input rows; under `data.bad_rows: skip` a batch is smaller by
its skipped rows. A batch whose rows are all bad is not yielded empty: the next non-empty batch of the
same reader is split in two to keep the count (only a reader left with fewer valid rows than batches
fails, with an error).

Resume. `ShardedLoader.state_dict()` is {"epoch", "batches" delivered this epoch, "readers"}; after
`load_state_dict()` the next pass of that epoch starts at exactly the next batch. The DataLoader takes
batches from its workers in turn and every reader makes the same number, so batch t of a rank is batch
t // K of reader t % K (after a resume at batch n, worker w plays reader (w + n) % K so that the turns
still line up). Each reader replays its part of the epoch: it reads, validates and shuffles the
row groups as before but does not build (collate) the batches already delivered. Cost: reading up to the
resume point again (roughly the time of that part of the epoch without collation).
"""

from __future__ import annotations

import glob
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
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
from .schema import SchemaError, check_rows, validate_schema

log = logging.getLogger(__name__)


def resolve_files(root: str, split: str) -> list[str]:
    """A split is a Parquet file, a directory of them, or a glob, relative to `root` unless absolute."""
    path = Path(split) if Path(split).is_absolute() else Path(root) / split
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    else:
        files = sorted(glob.glob(str(path), recursive=True))
    if not files:
        raise FileNotFoundError(f"no Parquet files for split {split!r} under {root!r} (looked for {path})")
    return files


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int
    num_rows: int
    first_row: int  # row number of its first row within the file (for error messages)


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of one row group (numbered within the row group)."""

    group: RowGroup
    start: int
    stop: int


def list_row_groups(files: list[str], data: DataConfig) -> tuple[list[RowGroup], list[str]]:
    """(row groups of the usable files, files skipped). A file that cannot be opened or whose schema does
    not match the config raises SchemaError, or is skipped with a warning under `data.bad_files: skip`."""
    groups, skipped = [], []
    for path in files:
        try:
            meta = pq.ParquetFile(path)
            validate_schema(meta.schema_arrow, data, path)
        except (OSError, pa.ArrowException, SchemaError) as err:
            message = str(err) if isinstance(err, SchemaError) else f"{path}: cannot read Parquet file ({err})"
            if data.bad_files == "error":
                raise SchemaError(message) from err
            log.warning("skipping file (data.bad_files=skip): %s", message)
            skipped.append(path)
            continue
        first = 0
        for i in range(meta.num_row_groups):
            n = meta.metadata.row_group(i).num_rows
            groups.append(RowGroup(path, i, n, first))
            first += n
    return groups, skipped


def read_columns(data: DataConfig) -> list[str]:
    """The Parquet columns the loader reads: the configured features and the fixed columns."""
    names = [f.name for f in data.features] + [data.label, data.timestamp, data.hist_timestamp, data.user_id]
    return list(dict.fromkeys(names))


def _split(start: int, count: int, parts: int, i: int) -> tuple[int, int]:
    """Part i of `parts` near-equal ranges of [start, start + count)."""
    return start + i * count // parts, start + (i + 1) * count // parts


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
        self.total_rows = sum(g.num_rows for g in self.groups)
        self.epoch = 0
        self.skip_batches = 0  # batches of this rank already delivered this epoch (resume)
        self.min_rows = self.total_rows // (world_size * self.workers)  # p: rows of the smallest reader
        if self.total_rows and not self.min_rows:
            raise ValueError(
                f"{files[0]}{' ...' if len(files) > 1 else ''}: {self.total_rows} rows cannot give every one "
                f"of world_size * num_workers = {world_size * self.workers} readers a row; use fewer workers"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rank_range(self) -> tuple[int, int]:
        return _split(0, self.total_rows, self.world_size, self.rank)

    def num_rows(self) -> int:
        """Rows this rank reads per epoch (all ranks: equal +-1)."""
        start, stop = self._rank_range()
        return stop - start

    def batches_per_reader(self) -> int:
        return math.ceil(self.min_rows / self.batch_size)

    def num_batches(self) -> int:
        """Batches this rank yields per epoch; the same on every rank (depends on row counts only)."""
        return self.workers * self.batches_per_reader()

    def segments(self, k: int) -> list[Segment]:
        """The row ranges reader k of this rank reads this epoch, in order."""
        order = np.arange(len(self.groups))
        if self.shuffle:
            np.random.default_rng((self.seed, self.epoch)).shuffle(order)
        rank_start, rank_stop = self._rank_range()
        start, stop = _split(rank_start, rank_stop - rank_start, self.workers, k)
        sizes = np.array([self.groups[i].num_rows for i in order], dtype=np.int64)
        ends = np.cumsum(sizes)  # virtual row after each group
        out = []
        for pos in range(int(np.searchsorted(ends, start, side="right")), len(order)):
            begin = int(ends[pos] - sizes[pos])
            if begin >= stop:
                break
            out.append(Segment(self.groups[order[pos]], max(start - begin, 0), min(stop, int(ends[pos])) - begin))
        return out

    def batch_sizes(self, k: int) -> list[int]:
        """Input rows of each batch of reader k: B, ..., B, then the rest (1 .. B+1)."""
        rows = sum(s.stop - s.start for s in self.segments(k))
        b = self.batches_per_reader()
        return [self.batch_size] * (b - 1) + [rows - (b - 1) * self.batch_size] if b else []

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"ParquetStream was built for {self.workers} readers per rank, runs in {workers}")
        # The DataLoader asks its workers in turn from worker 0, and batch t of the epoch belongs to
        # reader t % K: after `skip_batches` delivered batches, worker 0 plays reader skip_batches % K.
        reader = (worker + self.skip_batches) % workers
        done = max(0, -(-(self.skip_batches - reader) // workers))  # batches t < skip with t % K == reader
        yield from _Reader(self, reader).batches(skip=done)


class _Reader:
    """Reader k of a rank (its k-th part of the rank's rows) for one epoch: segments -> validated rows ->
    shuffle buffer -> batches. Runs in the DataLoader worker that plays reader k."""

    def __init__(self, stream: ParquetStream, k: int) -> None:
        self.s, self.data = stream, stream.data
        self.k = k
        self.reader = stream.rank * stream.workers + k
        self.rng = np.random.default_rng((stream.seed, stream.epoch, self.reader))
        self.sizes = stream.batch_sizes(k)
        self.skipped: Counter = Counter()  # rows dropped since the last batch handed out
        self.files: dict[str, pq.ParquetFile] = {}  # opened once per file, not once per row group

    def batches(self, skip: int) -> Iterator[Batch]:
        for index, table in enumerate(self._non_empty()):
            if index < skip:  # delivered before the resume point: replayed, not collated
                self.skipped.clear()
                continue
            batch = collate(table, self.data)
            batch.skipped, self.skipped = dict(self.skipped), Counter()
            yield batch

    def _non_empty(self) -> Iterator[pa.Table]:
        """The valid rows of each planned batch; a batch left with none is made up by splitting the next
        non-empty one, so the count stays len(self.sizes)."""
        owed = 0
        for table in self._planned():
            if table.num_rows == 0:
                owed += 1
                continue
            parts = min(owed + 1, table.num_rows)
            owed -= parts - 1
            cuts = [i * table.num_rows // parts for i in range(parts + 1)]
            for a, b in zip(cuts[:-1], cuts[1:]):
                yield table.slice(a, b - a)
        if owed:
            raise SchemaError(
                f"epoch {self.s.epoch}, rank {self.s.rank}, reader {self.k}: {owed} of {len(self.sizes)} "
                "batches have no valid row left after skipping bad rows (data.bad_rows=skip); the split has "
                "fewer valid rows than batches for world_size * num_workers readers"
            )

    def _planned(self) -> Iterator[pa.Table]:
        """Valid rows of each batch of `self.sizes` input rows, drawn from the shuffle buffer."""
        s = self.s
        capacity = max(self.data.shuffle_buffer, s.batch_size) if s.shuffle else s.batch_size
        tables: list[pa.Table] = []
        masks: list[np.ndarray] = []
        buffered = 0
        sizes = list(reversed(self.sizes))  # pop() takes the next size
        for segment in s.segments(self.k):
            table, ok = self._read(segment)
            tables.append(table)
            masks.append(ok)
            buffered += table.num_rows
            del table  # the buffer holds the only reference: drained rows are freed with it
            if buffered >= capacity:
                yield from self._drain(tables, masks, sizes, final=False)
                buffered = sum(t.num_rows for t in tables)
        yield from self._drain(tables, masks, sizes, final=True)

    def _read(self, segment: Segment) -> tuple[pa.Table, np.ndarray]:
        """Rows of a segment and which of them are valid; counts the others in self.skipped."""
        group, data = segment.group, self.data
        rows = segment.stop - segment.start
        first_row = group.first_row + segment.start
        try:
            if group.path not in self.files:
                self.files[group.path] = pq.ParquetFile(group.path)
            table = self.files[group.path].read_row_group(group.index, columns=read_columns(data))
        except (OSError, pa.ArrowException) as err:
            message = (f"{group.path}: rows {first_row}..{first_row + rows - 1} (row group {group.index}) "
                       f"cannot be read ({err})")
            if data.bad_files == "error":
                raise SchemaError(message) from err
            log.warning("skipping unreadable rows (data.bad_files=skip): %s", message)
            self.skipped["unreadable"] += rows
            schema = self.files[group.path].schema_arrow if group.path in self.files else None
            columns = {c: pa.nulls(rows, schema.field(c).type if schema else pa.null()) for c in read_columns(data)}
            return pa.table(columns), np.zeros(rows, dtype=bool)
        table = table.slice(segment.start, rows).combine_chunks()
        if not rows:
            return table, np.zeros(0, dtype=bool)
        ok, counts = check_rows(table.to_batches()[0], data, group.path, first_row, skip=data.bad_rows == "skip")
        self.skipped.update(counts)
        return table, ok

    def _drain(self, tables: list[pa.Table], masks: list[np.ndarray], sizes: list[int], final: bool
               ) -> Iterator[pa.Table]:
        """Cut the next planned batches from the buffer (shuffled when training); leave in it a tail
        smaller than the next batch, unless `final`, when every row must go."""
        if not tables:
            return
        table = pa.concat_tables(tables, promote_options="permissive")
        ok = np.concatenate(masks)
        tables.clear()
        masks.clear()
        n, used, take = table.num_rows, 0, []
        while sizes and (final or used + sizes[-1] <= n):
            take.append(sizes.pop())
            used += take[-1]
        if final and used != n:
            raise AssertionError(f"reader planned {used} rows but read {n}")  # a bug, not bad input
        if self.s.shuffle:
            order = self.rng.permutation(n)
            tail, order = order[: n - used], order[n - used:]
            if self.data.bucket_by_length:  # similar history lengths side by side; ties stay random
                length = pc.list_value_length(table.column(self.data.hist_timestamp)).to_numpy()
                length = np.minimum(length, self.data.max_len)  # as collated: longer rows are cut
                order = order[np.argsort(length[order], kind="stable")]
        else:
            tail, order = np.arange(used, n), np.arange(used)
        if tail.size:
            tables.append(table.take(tail))  # a copy: a slice would keep the whole buffer alive
            masks.append(ok[tail])
        if not used:
            return
        ordered = table.take(order) if self.s.shuffle else table
        del table  # not kept alive while the batches are built
        ok = ok[order]
        starts = np.cumsum([0, *take])
        batches = list(range(len(take)))
        if self.s.shuffle and self.data.bucket_by_length:
            self.rng.shuffle(batches)  # buckets in random order, not shortest first
        for i in batches:
            a, b = int(starts[i]), int(starts[i + 1])
            piece, good = ordered.slice(a, b - a), ok[a:b]
            yield piece if good.all() else piece.filter(pa.array(good))


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
        )
        for batch in loader:
            self.delivered += 1
            self.skipped.update(batch.skipped)
            yield batch

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


def build_dataloader(
    data: DataConfig, split: str, train: bool, seed: int, rank: int = 0, world_size: int = 1
) -> ShardedLoader:
    """The loader of one split for one rank: shuffled (and length-bucketed if configured) when training."""
    stream = ParquetStream(
        resolve_files(data.root, getattr(data, split)), data,
        batch_size=data.batch_size if train else data.eval_batch_size,
        shuffle=train and data.shuffle_buffer > 0, seed=seed, rank=rank, world_size=world_size,
        num_workers=data.num_workers,
    )
    return ShardedLoader(stream, data.num_workers)
