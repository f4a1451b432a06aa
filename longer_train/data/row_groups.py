"""Where the rows of a split are: its Parquet files (`resolve_files`), their row groups (`list_row_groups`, the
files' metadata only, no rows read) and the ranges of rows of a sharded pass (`Segment`, `near_equal_range`).
Reading and batching those rows is `loader.py`."""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path

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
