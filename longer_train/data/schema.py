"""The Parquet sample schema (one row per impression) and its validation.

Which columns a file must hold comes from the config (`DataConfig.features` and the label, timestamp,
hist_timestamp and user_id keys), never from code. `validate_schema` checks column presence and types;
`validate_batch` checks the values of one record batch, vectorised. Every error is a `SchemaError` that
names the file, the column and, when a row is at fault, the row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from longer_train.config import DataConfig

INT = "int64"
LIST = "list<int64>"
INT_OR_LIST = "int64 or list<int64>"
FLOAT = "float"

_KIND_OF_ROLE = {"candidate": INT, "sequence": LIST, "user": INT_OR_LIST, "dense": FLOAT}


class SchemaError(ValueError):
    """A Parquet file or batch does not match the sample schema (names the file, column and row)."""


def _column_uses(cfg: DataConfig, labelled: bool = True) -> dict[str, tuple[str, str]]:
    """column -> (kind, what it is used for); the fixed columns override a feature of the same name.
    `labelled=False` is for scoring requests, which have no label."""
    uses = {}
    for feat in cfg.features:
        where = f"{feat.role} feature" + (f", table '{feat.table}'" if feat.table else "")
        uses[feat.name] = (_KIND_OF_ROLE[feat.role], where)
    if labelled:
        uses[cfg.label] = (FLOAT, "label")
    uses[cfg.timestamp] = (INT, "request timestamp")
    uses[cfg.hist_timestamp] = (LIST, "history timestamps")
    uses[cfg.user_id] = (INT, "user id")
    return uses


def expected_columns(cfg: DataConfig) -> dict[str, str]:
    """column -> expected kind: "int64" | "list<int64>" | "int64 or list<int64>" | "float"."""
    return {name: kind for name, (kind, _) in _column_uses(cfg).items()}


def _is_int_list(tp: pa.DataType) -> bool:
    return pa.types.is_list(tp) and pa.types.is_int64(tp.value_type)


def _type_ok(tp: pa.DataType, kind: str) -> bool:
    if kind == INT:
        return pa.types.is_int64(tp)
    if kind == LIST:
        return _is_int_list(tp)
    if kind == INT_OR_LIST:
        return pa.types.is_int64(tp) or _is_int_list(tp)
    return pa.types.is_floating(tp) or pa.types.is_integer(tp)


def validate_schema(schema: pa.Schema, cfg: DataConfig, path: str, labelled: bool = True) -> None:
    """Raise SchemaError if a configured column is missing or has the wrong type."""
    for name, (kind, use) in _column_uses(cfg, labelled).items():
        found = schema.get_all_field_indices(name)
        if not found:
            raise SchemaError(
                f"{path}: missing column '{name}' ({use}, expected {kind}); "
                f"the file has columns: {', '.join(schema.names)}"
            )
        if len(found) > 1:
            raise SchemaError(f"{path}: column '{name}' ({use}) appears {len(found)} times, expected once")
        actual = schema.field(found[0]).type
        if not _type_ok(actual, kind):
            hint = ("any float or integer type is accepted" if kind == FLOAT
                    else "ids and timestamps must be int64: cast int32 columns when writing")
            raise SchemaError(f"{path}: column '{name}' ({use}) has type {actual}, expected {kind} ({hint})")


def _flat(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The values of a column and, for each value, its row in the batch (lists are flattened)."""
    if pa.types.is_list(arr.type):
        return pc.list_flatten(arr), pc.list_parent_indices(arr).to_numpy()
    return arr, np.arange(len(arr))


def _first(bad: np.ndarray, rows: np.ndarray) -> int | None:
    """Batch row of the first True in `bad` (values are ordered by row), or None."""
    hits = np.flatnonzero(bad)
    return int(rows[hits[0]]) if hits.size else None


def _raise_first(problems: list[tuple[int, str, str]], path: str, first_row: int) -> None:
    """Raise for the problem at the lowest row; `problems` holds (batch row, column, detail)."""
    if problems:
        row, name, detail = min(problems, key=lambda p: p[0])
        raise SchemaError(f"{path}: row {first_row + row}, column '{name}': {detail}")


def _null_problems(batch: pa.RecordBatch, uses: dict) -> list[tuple[int, str, str]]:
    problems = []
    for name in uses:
        arr = batch.column(name)
        row = _first(arr.is_null().to_numpy(zero_copy_only=False), np.arange(len(arr)))
        if row is not None:
            problems.append((row, name, "value is null; nulls are not allowed (an empty history is [])"))
            continue
        values, rows = _flat(arr)
        row = _first(values.is_null().to_numpy(zero_copy_only=False), rows)
        if row is not None:
            problems.append((row, name, "list holds a null element; nulls are not allowed"))
    return problems


def _value_problems(batch: pa.RecordBatch, cfg: DataConfig, labelled: bool) -> list[tuple[int, str, str]]:
    problems = []

    # every sequence column has as many events as hist_timestamp in each row
    ref = cfg.hist_timestamp
    ref_len = pc.list_value_length(batch.column(ref)).to_numpy()
    for feat in cfg.features:
        if feat.role == "sequence" and feat.name != ref:
            length = pc.list_value_length(batch.column(feat.name)).to_numpy()
            row = _first(length != ref_len, np.arange(len(length)))
            if row is not None:
                problems.append((row, feat.name, (
                    f"{length[row]} events but '{ref}' has {ref_len[row]}; "
                    "all sequence columns must have equal length within a row")))

    # sparse ids in 0 .. num_embeddings-1 of their table
    for feat in cfg.features:
        if feat.role == "dense":
            continue
        size = cfg.tables[feat.table].num_embeddings
        values, rows = _flat(batch.column(feat.name))
        ids = values.to_numpy()
        bad = (ids < 0) | (ids >= size)
        row = _first(bad, rows)
        if row is not None:
            bad_id = int(ids[np.flatnonzero(bad)[0]])
            problems.append((row, feat.name, (
                f"id {bad_id} is outside 0..{size - 1} "
                f"(table '{feat.table}' has num_embeddings={size})")))

    # label is exactly 0 or 1
    if labelled:
        label = batch.column(cfg.label).to_numpy(zero_copy_only=False).astype(np.float64)
        row = _first(~np.isin(label, (0.0, 1.0)), np.arange(len(label)))
        if row is not None:
            problems.append((row, cfg.label, f"label is {label[row]}, expected 0 or 1"))

    # no event after the request
    request = batch.column(cfg.timestamp).to_numpy()
    values, rows = _flat(batch.column(ref))
    event = values.to_numpy()
    bad = event > request[rows]
    row = _first(bad, rows)
    if row is not None:
        problems.append((row, ref, (
            f"event at {int(event[np.flatnonzero(bad)[0]])} is after the request time "
            f"{int(request[row])} ('{cfg.timestamp}'); every history event must be <= the request time")))

    # dense features are finite
    for feat in cfg.features:
        if feat.role == "dense":
            dense = batch.column(feat.name).to_numpy(zero_copy_only=False).astype(np.float64)
            row = _first(~np.isfinite(dense), np.arange(len(dense)))
            if row is not None:
                problems.append((row, feat.name, f"dense value is {dense[row]}, expected a finite number"))
    return problems


def validate_batch(
    batch: pa.RecordBatch, cfg: DataConfig, path: str, first_row: int = 0, labelled: bool = True
) -> None:
    """Raise SchemaError for the first offending row of `batch` (rows numbered from `first_row`).

    Checks the schema, then nulls, then: equal sequence lengths per row, ids within their table,
    label in {0, 1}, history timestamps <= the request timestamp, finite dense values.
    """
    validate_schema(batch.schema, cfg, path, labelled)
    uses = _column_uses(cfg, labelled)
    _raise_first(_null_problems(batch, uses), path, first_row)
    _raise_first(_value_problems(batch, cfg, labelled), path, first_row)
