"""Writing a dataset as a sequence store (`store.py`): the event log once, sorted by user then time, and
time-split folders of sample rows that point into it; meta.json and a final `.complete` marker, all through a
temporary folder next to the output that is renamed at the end (so the output is either absent, the previous
dataset, or complete). `StoreWriter` takes Arrow tables in pieces (the streaming preprocessors);
`write_dataset` takes whole arrays (the synthetic generator)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..data.store import EVENTS
from ..data.vocab import VOCAB_OF_COLUMN

SPLITS = ("train", "valid", "test")
SPLIT_QUANTILES = (0.8, 0.9)  # train before the first cut point, valid before the second, then test
PART_ROWS = 1_048_576  # sample rows per part (a multiple of ROW_GROUP_ROWS)
ROW_GROUP_ROWS = 8192
EVENT_GROUP_ROWS = 1_048_576  # events per row group: one uncompressed page per column (8 MiB at int64)
EVENT_PART_GROUPS = 8  # row groups per events part


class OutputError(OSError):
    """The output folder cannot be created or written (names the path)."""


def is_replaceable(path: Path) -> bool:
    """An existing output folder may be replaced only if it is empty or a dataset this module wrote."""
    return not any(path.iterdir()) or (path / "meta.json").is_file() or (path / ".complete").exists()


def time_split(timestamps: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(split index 0/1/2 per row, valid_from, test_from): global request-time quantiles."""
    valid_from, test_from = (int(np.quantile(timestamps, q, method="lower")) for q in SPLIT_QUANTILES)
    return np.where(timestamps < valid_from, 0, np.where(timestamps < test_from, 1, 2)), valid_from, test_from


def id_type(size: int) -> pa.DataType:
    """The narrowest Parquet-plain integer type for ids 0..size-1 in the event log (int32 unless too small)."""
    return pa.int32() if size <= np.iinfo(np.int32).max else pa.int64()


def event_schema(user: str, timestamp: str, columns: dict[str, pa.DataType]) -> pa.Schema:
    """The log's schema: user id, event time, then the sequence columns; every column required (no nulls)."""
    return pa.schema([pa.field(user, pa.int64(), nullable=False), pa.field(timestamp, pa.int64(), nullable=False),
                      *(pa.field(n, t, nullable=False) for n, t in columns.items())])


class _Parts:
    """Rolling Parquet parts `<folder>/part-NNNNN.parquet` of at most `group_rows * groups` rows, written in
    row groups of exactly `group_rows` rows (the last one of the folder may be shorter)."""

    def __init__(self, folder: Path, schema: pa.Schema, group_rows: int, groups: int, options: dict) -> None:
        folder.mkdir(parents=True)
        self.folder, self.schema, self.options = folder, schema, options
        self.group_rows, self.groups = group_rows, groups
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.parts = self.groups_in_part = self.rows = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.group_rows:
            self._flush(self.group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self.pending).combine_chunks()
        head, rest = table.slice(0, rows), table.slice(rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.folder / f"part-{self.parts:05d}.parquet", self.schema, **self.options)
            self.parts += 1
        self.writer.write_table(head, row_group_size=rows)
        self.rows += rows
        self.groups_in_part += 1
        if self.groups_in_part == self.groups:
            self.writer.close()
            self.writer, self.groups_in_part = None, 0

    def close(self) -> int:
        """Write what is left (an empty folder gets one empty part); return the rows written."""
        if self.pending_rows:
            self._flush(self.pending_rows)
        if self.writer is not None:
            self.writer.close()
        elif not self.parts:
            pq.write_table(self.schema.empty_table(), self.folder / "part-00000.parquet", **self.options)
        return self.rows


def event_write_options(schema: pa.Schema) -> dict:
    """Parquet settings of the log: the user column compressed (sorted, so it nearly vanishes), every value
    column one uncompressed PLAIN page per row group, so the loader can memory-map it (store.plain_values_at)."""
    user, values = schema.names[0], schema.names[1:]
    return {
        "compression": {user: "zstd", **{n: "none" for n in values}}, "use_dictionary": [user],
        "column_encoding": {n: "PLAIN" for n in values}, "data_page_size": 1 << 30,
        "max_rows_per_page": EVENT_GROUP_ROWS, "write_statistics": [user],
        "sorting_columns": [pq.SortingColumn(0), pq.SortingColumn(1)],
    }


class StoreWriter:
    """Writes a store into `.<out>.tmp-<pid>` next to `out`: `events()` takes the log in order, `rows()` each
    split's sample rows in their final order; `finish()` writes meta.json and `.complete` and renames the folder
    to `out`. Used as a context manager, the temporary folder is removed if anything fails."""

    def __init__(self, out: Path, events: pa.Schema, rows: pa.Schema) -> None:
        self.out = Path(out)
        self.tmp = self.out.with_name(f".{self.out.name}.tmp-{os.getpid()}")
        try:
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir(parents=True)
        except OSError as err:
            raise OutputError(f"{self.out}: cannot create the output folder beside it ({err.strerror or err})") from err
        self.event_parts = _Parts(self.tmp / EVENTS, events, EVENT_GROUP_ROWS, EVENT_PART_GROUPS,
                                  event_write_options(events))
        if "label" in rows.names:  # label last, as in the inline schema
            rows = pa.schema([*(f for f in rows if f.name != "label"), rows.field("label")])
        self.splits = {s: _Parts(self.tmp / s, rows, ROW_GROUP_ROWS, PART_ROWS // ROW_GROUP_ROWS,
                                 {"compression": "zstd"}) for s in SPLITS}

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def events(self, table: pa.Table) -> None:
        self.event_parts.write(table)

    def rows(self, split: str, table: pa.Table) -> None:
        self.splits[split].write(table)

    def finish(self, meta: dict, extra: Callable[[Path, dict], None] | None = None) -> dict:
        """Close the parts, fill meta's layout and row counts, call `extra(tmp, meta)` for dataset-specific files,
        write meta.json and `.complete`, and move the result to `out`."""
        meta["layout"] = "store"
        meta["events"] = {"rows": self.event_parts.close(), "folder": EVENTS}
        columns = [*self.event_parts.schema.names, *self.splits[SPLITS[0]].schema.names]
        vocab = meta.get("vocab", {})
        meta["num_embeddings"] = {c: vocab[VOCAB_OF_COLUMN[c]] for c in columns if VOCAB_OF_COLUMN.get(c) in vocab}
        meta.setdefault("rows", {})
        for split, parts in self.splits.items():
            meta["rows"][split] = parts.close()
        if extra is not None:
            extra(self.tmp, meta)
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (self.tmp / ".complete").touch()  # last: a folder without it is not a finished dataset
        if self.out.exists():
            shutil.rmtree(self.out)
        self.tmp.rename(self.out)
        return meta


def write_dataset(
    out_dir: Path, meta: dict, columns: dict[str, np.ndarray], events: dict[str, np.ndarray], split_of: np.ndarray,
    rng: np.random.Generator, extra: Callable[[Path, dict], None] | None = None,
) -> dict:
    """Write a store from whole arrays: `events` (user_id, hist_timestamp, then the sequence columns) in
    (user, time) order, and sample rows `columns` of which rows with split_of == 0/1/2 go to train/valid/test,
    shuffled within each split with `rng`. Fills meta's rows / positive_rate; see StoreWriter.finish."""
    names = list(events)
    types = {n: id_type(int(events[n].max(initial=0)) + 1) for n in names[2:]}
    rows_schema = pa.table({n: v[:0] for n, v in columns.items()}).schema
    meta.setdefault("positive_rate", {})
    with StoreWriter(Path(out_dir), event_schema(names[0], names[1], types), rows_schema) as writer:
        for lo in range(0, max(len(events[names[0]]), 1), EVENT_GROUP_ROWS):
            writer.events(pa.table({n: v[lo: lo + EVENT_GROUP_ROWS] for n, v in events.items()}))
        for s, name in enumerate(SPLITS):
            index = rng.permutation(np.flatnonzero(split_of == s))  # split by time, shuffled within
            writer.rows(name, pa.table({n: v[index] for n, v in columns.items()}))
            meta["positive_rate"][name] = round(float(columns["label"][index].mean()), 4) if len(index) else 0.0
        return writer.finish(meta, extra)
