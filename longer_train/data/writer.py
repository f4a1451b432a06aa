"""Writing a dataset in the sample schema: time-split folders of Parquet parts, meta.json and a final
`.complete` marker, all through a temporary folder next to the output that is renamed at the end (so the
output is either absent, the previous dataset, or complete). Used by the synthetic generator and the
public-dataset preprocessors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "valid", "test")
SPLIT_QUANTILES = (0.8, 0.9)  # train before the first cut point, valid before the second, then test
PART_ROWS = 50_000
ROW_GROUP_ROWS = 8192


def _list_column(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.ListArray:
    """list<int64> whose row r holds values[starts[r]:ends[r]]."""
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[index]))


def write_split(
    folder: Path, columns: dict[str, np.ndarray], history: dict[str, np.ndarray], start: np.ndarray,
    end: np.ndarray, index: np.ndarray,
) -> None:
    """Write rows `index` as parts of at most PART_ROWS rows (row groups of ROW_GROUP_ROWS); an empty split
    gets one empty part. `columns` are per-row arrays ("label" is written last); `history` maps each list
    column to the concatenated event values, of which row r holds values[start[r]:end[r]]."""
    folder.mkdir(parents=True)
    for part, lo in enumerate(range(0, max(len(index), 1), PART_ROWS)):
        r = index[lo: lo + PART_ROWS]
        table = pa.table({
            **{name: values[r] for name, values in columns.items() if name != "label"},
            **{name: _list_column(values, start[r], end[r]) for name, values in history.items()},
            "label": columns["label"][r],
        })
        pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=ROW_GROUP_ROWS)


def is_replaceable(path: Path) -> bool:
    """An existing output folder may be replaced only if it is empty or a dataset this module wrote."""
    return not any(path.iterdir()) or (path / "meta.json").is_file() or (path / ".complete").exists()


def time_split(timestamps: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(split index 0/1/2 per row, valid_from, test_from): global request-time quantiles."""
    valid_from, test_from = (int(np.quantile(timestamps, q, method="lower")) for q in SPLIT_QUANTILES)
    return np.where(timestamps < valid_from, 0, np.where(timestamps < test_from, 1, 2)), valid_from, test_from


def write_dataset(
    out_dir: Path, meta: dict, columns: dict[str, np.ndarray], history: dict[str, np.ndarray],
    start: np.ndarray, end: np.ndarray, split_of: np.ndarray, rng: np.random.Generator,
    extra: Callable[[Path, dict], None] | None = None,
) -> dict:
    """Write every split (rows shuffled within it), fill meta's rows / positive_rate, call `extra(tmp, meta)`
    for dataset-specific files, write meta.json and `.complete`, and move the result to `out_dir`."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    meta.setdefault("rows", {})
    meta.setdefault("positive_rate", {})
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        for s, name in enumerate(SPLITS):
            index = rng.permutation(np.flatnonzero(split_of == s))  # split by time, shuffled within
            write_split(tmp / name, columns, history, start, end, index)
            meta["rows"][name] = int(len(index))
            meta["positive_rate"][name] = round(float(columns["label"][index].mean()), 4) if len(index) else 0.0
        if extra is not None:
            extra(tmp, meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / ".complete").touch()  # last: a folder without it is not a finished dataset
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return meta
