"""Streaming Parquet loader: reads row groups with pyarrow, validates them, shuffles through a bounded
buffer, and yields `Batch`es built inside the DataLoader workers. Never loads a whole dataset.

Work is split by row group across (rank, worker) pairs, so each row is read by one reader per epoch.
"""

from __future__ import annotations

import glob
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..config import DataConfig
from .batch import Batch, collate
from .schema import SchemaError, validate_batch, validate_schema


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


def list_row_groups(files: list[str], data: DataConfig) -> list[RowGroup]:
    """Row groups of all files, after checking each file's schema against the config."""
    groups = []
    for path in files:
        try:
            meta = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as err:
            raise SchemaError(f"{path}: cannot read Parquet file ({err})") from err
        validate_schema(meta.schema_arrow, data, path)
        first = 0
        for i in range(meta.num_row_groups):
            n = meta.metadata.row_group(i).num_rows
            groups.append(RowGroup(path, i, n, first))
            first += n
    return groups


def _columns(data: DataConfig) -> list[str]:
    names = [f.name for f in data.features] + [data.label, data.timestamp, data.hist_timestamp, data.user_id]
    return list(dict.fromkeys(names))


class ParquetStream(IterableDataset):
    """Iterable of `Batch`es over one split, for one rank; DataLoader workers split it further."""

    def __init__(
        self, files: list[str], data: DataConfig, batch_size: int, shuffle: bool, seed: int = 0,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        super().__init__()
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.groups = list_row_groups(files, data)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_groups(self, worker: int, num_workers: int) -> list[RowGroup]:
        order = list(range(len(self.groups)))
        if self.shuffle:
            np.random.default_rng((self.seed, self.epoch)).shuffle(order)
        reader, readers = self.rank * num_workers + worker, self.world_size * num_workers
        return [self.groups[i] for i in order[reader::readers]]

    def num_rows(self) -> int:
        """Rows this rank reads per epoch."""
        return sum(g.num_rows for g in self._my_groups(0, 1))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, worker))
        columns = _columns(self.data)
        buffer: list[pa.Table] = []
        buffered = 0
        files: dict[str, pq.ParquetFile] = {}  # opened once per file, not once per row group
        capacity = max(self.data.shuffle_buffer, self.batch_size) if self.shuffle else self.batch_size
        for group in self._my_groups(worker, num_workers):
            if group.path not in files:
                files[group.path] = pq.ParquetFile(group.path)
            table = files[group.path].read_row_group(group.index, columns=columns)
            for record_batch in table.to_batches():
                validate_batch(record_batch, self.data, group.path, group.first_row)
            buffer.append(table)
            buffered += table.num_rows
            if buffered >= capacity:
                yield from self._drain(buffer, rng, keep_tail=True)
                buffered = sum(t.num_rows for t in buffer)
        yield from self._drain(buffer, rng, keep_tail=False)

    def _drain(self, buffer: list[pa.Table], rng: np.random.Generator, keep_tail: bool) -> Iterator[Batch]:
        """Emit full batches from the buffer (shuffled if training); leave the remainder in it."""
        if not buffer:
            return
        table = pa.concat_tables(buffer)
        buffer.clear()
        if self.shuffle:
            table = table.take(rng.permutation(table.num_rows))
        n = table.num_rows
        end = n - n % self.batch_size if keep_tail else n
        for start in range(0, end, self.batch_size):
            yield collate(table.slice(start, self.batch_size), self.data)
        if end < n:
            buffer.append(table.slice(end))


def _identity(batch: Batch) -> Batch:
    return batch


class ShardedLoader:
    """What the trainer iterates: this rank's batches of one split, with the epoch and the position in it
    as state (`{"epoch", "batches"}`), so a resumed run continues with exactly the next batch."""

    def __init__(self, stream: ParquetStream, num_workers: int) -> None:
        self.stream = stream
        self.loader = DataLoader(
            stream, batch_size=None, num_workers=num_workers, collate_fn=_identity,
            persistent_workers=False, prefetch_factor=4 if num_workers else None,
            generator=torch.Generator(),  # its own: starting an epoch must not draw from the global RNG
        )
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0
        self.stream.set_epoch(epoch)

    def num_batches(self) -> int:
        return math.ceil(self.stream.num_rows() / self.stream.batch_size)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.skip}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.skip = int(state["epoch"]), int(state["batches"])
        self.stream.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        self.stream.set_epoch(self.epoch)
        return itertools.islice(iter(self.loader), self.skip, None)


def build_dataloader(
    data: DataConfig, split: str, train: bool, seed: int, rank: int = 0, world_size: int = 1
) -> ShardedLoader:
    stream = ParquetStream(
        resolve_files(data.root, getattr(data, split)), data,
        batch_size=data.batch_size if train else data.eval_batch_size,
        shuffle=train and data.shuffle_buffer > 0, seed=seed, rank=rank, world_size=world_size,
    )
    return ShardedLoader(stream, data.num_workers)
