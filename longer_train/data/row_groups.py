"""Where the rows of a split are: its Parquet files (`resolve_files`), their row groups (`list_row_groups`, the
files' metadata only, no rows read) and which rows each reader of a sharded pass reads (`ShardGeometry`,
`Segment`, `near_equal_range`). Reading and batching those rows is `loader.py`.

Sharding. Each epoch the row groups of all files are put in one (seeded, per-epoch) order and read as
one virtual sequence of T rows. Rank r takes rows [r*T//W, (r+1)*T//W) (W ranks: equal to +-1 row), and
worker k of its K readers takes an equal (+-1) sub-range of that, so every row is read once per epoch and
row groups at a boundary are shared by two readers. Every reader holds m rows with m in {p, p+1},
p = T // (W*K), and makes exactly ceil(p / B) batches (B = batch size): all of B rows except the last,
which holds the rest (at most B+1). So every rank yields K * ceil(p / B) batches (`num_batches()`), a
function of row counts only: an uneven split never leaves one rank short of a batch (which would hang
the embedding all-to-all); TorchRec accepts batch sizes that differ by a row between ranks.
"""

from __future__ import annotations

import glob
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import DataConfig
from .schema import SchemaError, is_store_schema, validate_schema

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
    store: bool = False  # a sequence store's sample rows: histories are rebuilt from the event log


@dataclass(frozen=True)
class Segment:
    """Rows [start, stop) of one row group (numbered within the row group)."""

    group: RowGroup
    start: int
    stop: int


def list_row_groups(files: list[str], data: DataConfig) -> tuple[list[RowGroup], list[str]]:
    """(row groups of the usable files, files skipped). A file that cannot be opened or whose schema does
    not match the config raises SchemaError, or is skipped with a warning under `data.bad_files: skip`.
    A file holding none of the history columns is a sequence store's sample file (store.py)."""
    groups, skipped = [], []
    for path in files:
        try:
            meta = pq.ParquetFile(path)
            store = is_store_schema(meta.schema_arrow, data)
            validate_schema(meta.schema_arrow, data, path, history=not store)
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
            groups.append(RowGroup(path, i, n, first, store))
            first += n
    return groups, skipped


def near_equal_range(start: int, count: int, parts: int, i: int) -> tuple[int, int]:
    """Part i of `parts` near-equal ranges of [start, start + count)."""
    return start + i * count // parts, start + (i + 1) * count // parts


@dataclass(frozen=True)
class ShardGeometry:
    """Which rows reader k (of `workers` per rank) of `rank` (of `world_size`) reads in an epoch, and how
    many batches of how many input rows it makes: a function of the row groups' sizes, the seed and the
    epoch only (no row is read)."""

    groups: tuple[RowGroup, ...]
    batch_size: int
    shuffle: bool
    seed: int
    rank: int
    world_size: int
    workers: int

    @property
    def total_rows(self) -> int:
        return sum(g.num_rows for g in self.groups)

    @property
    def min_rows(self) -> int:
        """p: rows of the smallest reader."""
        return self.total_rows // (self.world_size * self.workers)

    def rank_range(self) -> tuple[int, int]:
        return near_equal_range(0, self.total_rows, self.world_size, self.rank)

    def num_rows(self) -> int:
        """Rows this rank reads per epoch (all ranks: equal +-1)."""
        start, stop = self.rank_range()
        return stop - start

    def batches_per_reader(self) -> int:
        return math.ceil(self.min_rows / self.batch_size)

    def num_batches(self) -> int:
        """Batches this rank yields per epoch; the same on every rank (depends on row counts only)."""
        return self.workers * self.batches_per_reader()

    def segments(self, epoch: int, k: int) -> list[Segment]:
        """The row ranges reader k of this rank reads this epoch, in order."""
        order = np.arange(len(self.groups))
        if self.shuffle:
            np.random.default_rng((self.seed, epoch)).shuffle(order)
        rank_start, rank_stop = self.rank_range()
        start, stop = near_equal_range(rank_start, rank_stop - rank_start, self.workers, k)
        sizes = np.array([self.groups[i].num_rows for i in order], dtype=np.int64)
        ends = np.cumsum(sizes)  # virtual row after each group
        out = []
        for pos in range(int(np.searchsorted(ends, start, side="right")), len(order)):
            begin = int(ends[pos] - sizes[pos])
            if begin >= stop:
                break
            out.append(Segment(self.groups[order[pos]], max(start - begin, 0), min(stop, int(ends[pos])) - begin))
        return out

    def batch_sizes(self, epoch: int, k: int) -> list[int]:
        """Input rows of each batch of reader k: B, ..., B, then the rest (1 .. B+1)."""
        rows = sum(s.stop - s.start for s in self.segments(epoch, k))
        b = self.batches_per_reader()
        return [self.batch_size] * (b - 1) + [rows - (b - 1) * self.batch_size] if b else []


def resumed_reader(worker: int, workers: int, skip_batches: int) -> tuple[int, int]:
    """(reader a DataLoader worker plays, batches of that reader already delivered) after `skip_batches`
    delivered batches of the epoch. The DataLoader asks its workers in turn from worker 0, and batch t of
    the epoch belongs to reader t % K: so worker 0 plays reader skip_batches % K."""
    reader = (worker + skip_batches) % workers
    return reader, max(0, -(-(skip_batches - reader) // workers))  # batches t < skip with t % K == reader


class SegmentRows:
    """A reader's rows numbered 0..n-1 in the order of its segments: which segment holds a row id, and where."""

    def __init__(self, segments: list[Segment]) -> None:
        self.counts = np.array([seg.stop - seg.start for seg in segments], dtype=np.int64)
        self.first_id = np.concatenate([[0], np.cumsum(self.counts)])  # id of each segment's first row

    def ids(self, seg: int) -> np.ndarray:
        return np.arange(self.first_id[seg], self.first_id[seg + 1])

    def rows(self, seg: int) -> int:
        return int(self.first_id[seg + 1] - self.first_id[seg])

    def segment_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.first_id, ids, side="right") - 1
