"""The Parquet sample schema (one row per impression) and its validation.

Which columns a file must hold comes from the config (`DataConfig.features` and the label, timestamp,
hist_timestamp and user_id keys), never from code. `validate_schema` checks column presence and types;
`validate_batch` checks the values of one record batch, vectorised; `check_rows` does the same for the
loader and, under `data.bad_rows: skip`, returns why each row is invalid ("" for a valid row) instead of
raising. Every error is a `SchemaError` that names the file, the column and, when a row is at
fault, the row (numbered within the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from longer_train.config import DataConfig
from longer_train.errors import InputError

from .oov import unmappable

INT = "int64"
LIST = "list<int64>"
INT_OR_LIST = "int64 or list<int64>"
FLOAT = "float"

_KIND_OF_ROLE = {"candidate": INT, "sequence": LIST, "user": INT_OR_LIST, "dense": FLOAT}


class SchemaError(InputError):
    """A Parquet file or batch does not match the sample schema (names the file, column and row)."""


def history_columns(data: DataConfig) -> list[str]:
    """The list columns an inline row holds and the store keeps in its log: hist_timestamp, then the sequence
    features (config order)."""
    return list(dict.fromkeys([data.hist_timestamp, *data.columns("sequence")]))


def is_store_schema(schema: pa.Schema, data: DataConfig) -> bool:
    """A sample file of the store holds none of the history columns (an inline file holds all of them)."""
    return not any(name in schema.names for name in history_columns(data))


def _column_uses(cfg: DataConfig, labelled: bool = True, history: bool = True) -> dict[str, tuple[str, str]]:
    """column -> (kind, what it is used for); the fixed columns override a feature of the same name.
    `labelled=False` is for scoring requests, which have no label; `history=False` for the sample files of a
    sequence store, whose history columns live in the event log (store.py)."""
    uses = {}
    for feat in cfg.features:
        if feat.role == "sequence" and not history:
            continue
        where = f"{feat.role} feature" + (f", table '{feat.table}'" if feat.table else "")
        uses[feat.name] = (_KIND_OF_ROLE[feat.role], where)
    if labelled:
        uses[cfg.label] = (FLOAT, "label")
    uses[cfg.timestamp] = (INT, "request timestamp")
    if history:
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


def validate_schema(
    schema: pa.Schema, cfg: DataConfig, path: str, labelled: bool = True, history: bool = True
) -> None:
    """Raise SchemaError if a configured column is missing or has the wrong type (`history=False`: a store's
    sample file, without the history columns)."""
    for name, (kind, use) in _column_uses(cfg, labelled, history).items():
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


@dataclass
class RowProblem:
    """Rows of a batch that fail one check, and how to describe one of them."""

    reason: str  # the skip counter: null, unequal_lengths, negative_id, id_out_of_vocab, bad_label, ...
    column: str
    rows: np.ndarray  # bool [rows of the batch]
    detail: Callable[[int], str]  # batch row -> what is wrong with it


def _rows_of(bad_values: np.ndarray, parent: np.ndarray, num_rows: int) -> np.ndarray:
    rows = np.zeros(num_rows, dtype=bool)
    rows[parent[bad_values]] = True
    return rows


def _first_value(bad_values: np.ndarray, parent: np.ndarray, values: np.ndarray, row: int) -> int:
    return int(values[_first_index(bad_values, parent, row)])


def _first_index(bad_values: np.ndarray, parent: np.ndarray, row: int) -> int:
    return int(np.flatnonzero(bad_values & (parent == row))[0])


# (list column, index of a value in the batch's flattened column) -> where it comes from, e.g. the event log's
# file and row for a history rebuilt from a sequence store ("" when there is nothing to add)
Where = Callable[[str, int], str]


def _null_problems(batch: pa.RecordBatch, uses: dict) -> list[RowProblem]:
    problems = []
    for name in uses:
        arr = batch.column(name)
        rows = arr.is_null().to_numpy(zero_copy_only=False)
        if rows.any():
            problems.append(RowProblem("null", name, rows, lambda _: (
                "value is null; nulls are not allowed (an empty history is [])")))
        if pa.types.is_list(arr.type):
            values, parent = _flat(arr)
            rows = _rows_of(values.is_null().to_numpy(zero_copy_only=False), parent, len(arr))
            if rows.any():
                problems.append(RowProblem("null", name, rows, lambda _: (
                    "list holds a null element; nulls are not allowed")))
    return problems


# the largest magnitude a dense feature may have: beyond it the fp32 dense layers overflow to inf and the score
# becomes NaN (an unscaled value of 1e25 did); scale such features at preparation
DENSE_LIMIT = 1e12


def _value_problems(batch: pa.RecordBatch, cfg: DataConfig, labelled: bool, where: Where | None) -> list[RowProblem]:
    """Checks of a batch without nulls."""
    problems = []
    n = batch.num_rows

    # every sequence column has as many events as hist_timestamp in each row
    ref = cfg.hist_timestamp
    ref_len = pc.list_value_length(batch.column(ref)).to_numpy()
    for feat in cfg.features:
        if feat.role == "sequence" and feat.name != ref:
            length = pc.list_value_length(batch.column(feat.name)).to_numpy()
            if (length != ref_len).any():
                problems.append(RowProblem("unequal_lengths", feat.name, length != ref_len, lambda r, length=length: (
                    f"{length[r]} events but '{ref}' has {ref_len[r]}; "
                    "all sequence columns must have equal length within a row")))

    # sparse ids: never negative; beyond the vocabulary only if the table's OOV policy maps them
    for feat in cfg.features:
        if feat.role == "dense":
            continue
        table = cfg.tables[feat.table]
        values, parent = _flat(batch.column(feat.name))
        ids = values.to_numpy()
        negative = ids < 0
        beyond = unmappable(ids, table) & ~negative
        for reason, bad in (("negative_id", negative), ("id_out_of_vocab", beyond)):
            if bad.any():
                problems.append(RowProblem(reason, feat.name, _rows_of(bad, parent, n),
                                           lambda r, bad=bad, parent=parent, ids=ids, t=feat.table, table=table,
                                           name=feat.name, listed=feat.role == "sequence": (
                    f"id {_first_value(bad, parent, ids, r)} is outside 0..{table.num_embeddings - 1} "
                    f"(table '{t}' has num_embeddings={table.num_embeddings}, oov={table.oov})"
                    + (where(name, _first_index(bad, parent, r)) if where and listed else ""))))

    # label is exactly 0 or 1
    if labelled:
        label = batch.column(cfg.label).to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isin(label, (0.0, 1.0))
        if bad.any():
            problems.append(RowProblem("bad_label", cfg.label, bad, lambda r: (
                f"label is {label[r]}, expected 0 or 1")))

    # no event after the request
    request = batch.column(cfg.timestamp).to_numpy()
    values, parent = _flat(batch.column(ref))
    event = values.to_numpy()
    bad = event > request[parent]
    if bad.any():
        problems.append(RowProblem("future_event", ref, _rows_of(bad, parent, n), lambda r, bad=bad, parent=parent: (
            f"event at {_first_value(bad, parent, event, r)} is after the request time "
            f"{int(request[r])} ('{cfg.timestamp}'); every history event must be <= the request time")))

    # timestamps are not negative: the loader takes their differences in int64
    for column, stamps, owner in ((cfg.timestamp, request, np.arange(n)), (ref, event, parent)):
        bad = stamps < 0
        if bad.any():
            problems.append(RowProblem("bad_timestamp", column, _rows_of(bad, owner, n),
                                       lambda r, bad=bad, owner=owner, stamps=stamps: (
                f"timestamp {_first_value(bad, owner, stamps, r)} is negative; timestamps are int64 >= 0")))

    # dense features are finite numbers within +-DENSE_LIMIT
    for feat in cfg.features:
        if feat.role == "dense":
            dense = batch.column(feat.name).to_numpy(zero_copy_only=False).astype(np.float64)
            bad = ~(np.abs(dense) <= DENSE_LIMIT)  # NaN compares False
            if bad.any():
                problems.append(RowProblem("bad_dense", feat.name, bad, lambda r, dense=dense: (
                    f"dense value is {dense[r]}, expected a finite number within +-{DENSE_LIMIT:g}")))
    return problems


def row_problems(
    batch: pa.RecordBatch, cfg: DataConfig, labelled: bool = True, where: Where | None = None
) -> list[RowProblem]:
    """Every failed check of `batch` (schema already valid). Rows with nulls are reported as such only;
    the value checks run on the other rows. `where` adds the origin of a bad history id to its message."""
    problems = _null_problems(batch, _column_uses(cfg, labelled))
    if not problems:
        return _value_problems(batch, cfg, labelled, where)
    has_null = np.logical_or.reduce([p.rows for p in problems])
    rest = np.flatnonzero(~has_null)
    # the null-free batch renumbers list values too, so `where` is not applied there
    for p in _value_problems(batch.take(pa.array(rest)), cfg, labelled, None):
        rows = np.zeros(batch.num_rows, dtype=bool)
        rows[rest[p.rows]] = True
        index = np.cumsum(~has_null) - 1  # batch row -> row of the null-free batch
        problems.append(RowProblem(p.reason, p.column, rows, lambda r, p=p, index=index: p.detail(int(index[r]))))
    return problems


def _error(problems: list[RowProblem], path: str, first_row: int) -> SchemaError:
    """The error for the problem at the lowest row (nulls first: other checks skip null rows)."""
    nulls = [p for p in problems if p.reason == "null"]
    row, problem = min(((int(np.argmax(p.rows)), p) for p in (nulls or problems)), key=lambda rp: rp[0])
    return SchemaError(f"{path}: row {first_row + row}, column '{problem.column}': {problem.detail(row)}")


def validate_batch(
    batch: pa.RecordBatch, cfg: DataConfig, path: str, first_row: int = 0, labelled: bool = True
) -> None:
    """Raise SchemaError for the first offending row of `batch` (rows numbered from `first_row`).

    Checks the schema, then nulls, then: equal sequence lengths per row, ids that are not negative and
    within their table (or mapped by its OOV policy), label in {0, 1}, timestamps >= 0, history timestamps <= the
    request timestamp, dense values finite and within +-DENSE_LIMIT.
    """
    validate_schema(batch.schema, cfg, path, labelled)
    problems = row_problems(batch, cfg, labelled)
    if problems:
        raise _error(problems, path, first_row)


def check_rows(
    batch: pa.RecordBatch, cfg: DataConfig, path: str, first_row: int = 0, skip: bool = False,
    where: Where | None = None,
) -> np.ndarray:
    """Why each row of a batch whose schema is valid is invalid: an object array of reasons, "" for a valid
    row. Without `skip` the first bad row raises SchemaError; with it, every bad row gets the first reason
    found for it."""
    problems = row_problems(batch, cfg, where=where)
    why = np.full(batch.num_rows, "", dtype=object)
    if problems and not skip:
        raise _error(problems, path, first_row)
    for p in problems:
        why[p.rows & (why == "")] = p.reason
    return why
