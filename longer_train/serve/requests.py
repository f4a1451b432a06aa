"""JSON scoring requests -> validated columns, checked field by field before anything is expanded.

A request is `{"user": {<every column of the sample schema that is not a candidate feature or the label>},
"candidates": [{<candidate feature columns>}, ...]}`. `decode_request` turns its body into a
`ScoringRequest`: the user side once (one row, the history stored once however many candidates there
are) and one row per candidate. Every problem is a `RequestError` whose message names the field:

- the body: at most `max_body_bytes` (413), JSON nested at most `MAX_DEPTH` deep (checked before the
  parser recurses), no NaN/Infinity literals, numbers of at most 4,300 digits (Python's limit);
- sizes: at most `max_candidates` candidates and `max_history` events per history list (413), each list's
  length checked on the parsed JSON before it is converted;
- types: ids and timestamps are JSON integers (`5.5`, `5.0`, `"5"`, `true` are refused, never truncated)
  within int64; dense features are numbers;
- times: unix seconds in `0 .. MAX_TIME` (so `timestamp - hist_timestamp` cannot overflow int64),
  `hist_timestamp` non-decreasing (oldest first) and never after `timestamp`;
- the rest of the sample schema's row checks (`data.schema.row_problems`: ids within their table or
  mapped by its OOV policy, sequence columns of equal length, finite dense values).

Memory: the parsed body holds at most 35x its bytes of Python objects while it is decoded (tested); a
decoded request holds 8 bytes per history event and column and 8 bytes per candidate and column — the
history is never repeated per candidate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..config import DataConfig
from ..data.oov import unmappable
from ..data.schema import row_problems
from .limits import RequestLimits

MAX_DEPTH = 8  # a valid request nests 3 deep ({"user": {"hist_item_id": [...]}}); anything deeper is refused
MAX_TIME = 2**62 - 1  # unix seconds; request time - event time then always fits int64
_INT64 = (-(2**63), 2**63 - 1)
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = (ord(c) for c in "[]\"\\")


class RequestError(Exception):
    """A request the client must fix: HTTP `status` (4xx) and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ScoringRequest:
    user: pa.Table  # one row: every column but the label; candidate columns hold the first candidate's ids
    candidates: pa.Table  # one row per candidate: the candidate feature columns

    @property
    def num_candidates(self) -> int:
        return self.candidates.num_rows


def json_depth(body: bytes) -> int:
    """Deepest nesting of arrays/objects in `body`, in O(len) numpy work (brackets inside strings do not
    count). Exact for valid JSON; for invalid JSON any number (the parser refuses it anyway)."""
    raw = np.frombuffer(body, dtype=np.uint8)
    quotes = np.flatnonzero(raw == _QUOTE)
    backslash = np.concatenate(([0], (raw == _BACKSLASH).view(np.int8), [0]))
    if quotes.size and backslash.any():  # a quote is escaped when an odd run of backslashes precedes it
        edges = np.diff(backslash)
        run_start, run_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # run_end: one past it
        run = np.searchsorted(run_end, quotes)
        ends_here = run < len(run_end)
        ends_here[ends_here] &= run_end[run[ends_here]] == quotes[ends_here]
        odd = np.zeros(len(quotes), dtype=bool)
        odd[ends_here] = (run_end - run_start)[run[ends_here]] % 2 == 1
        quotes = quotes[~odd]
    inside = np.zeros(len(raw) + 1, dtype=np.int8)  # +1 at an opening quote, -1 after its closing one
    inside[quotes[0::2]] += 1
    inside[quotes[1::2] + 1] -= 1
    folded = raw | 32  # "[" -> "{" and "]" -> "}": one comparison each for arrays and objects
    step = (folded == (_OPEN | 32)).view(np.int8) - (folded == (_CLOSE | 32)).view(np.int8)
    step[np.cumsum(inside[:-1], dtype=np.int8) != 0] = 0
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


# bytes a decoded JSON value costs at most, about: a Python object (an empty dict 64, a float 24) and its slot in
# its list or dict (8); with one value per ',', '[' or '{' this over-counts every body's decoded size
BYTES_PER_VALUE = 72


def json_values(data: bytes) -> int:
    """At least how many JSON values `data` (a body, or a piece of one) holds, without parsing it: one per ',',
    '[' and '{' (a few ms per MiB); with 1 added per body, an upper bound of its values."""
    return data.count(b",") + data.count(b"[") + data.count(b"{")


def check_expansion(values: int, max_decoded_bytes: int) -> None:
    """Refuse (413) a body of `values` JSON values (`json_values` + 1) whose decoded objects could exceed
    `max_decoded_bytes`, before it is parsed: a few bytes on the wire ('{},' or '[],') become tens in memory."""
    if values * BYTES_PER_VALUE > max_decoded_bytes:
        raise RequestError(413, f"body holds {values} or more JSON values (up to {values * BYTES_PER_VALUE // 2**20} "
                                f"MiB decoded), at most {max_decoded_bytes // BYTES_PER_VALUE} values")


def parse_json(body: bytes, max_body_bytes: int) -> Any:
    if len(body) > max_body_bytes:
        raise RequestError(413, f"body of {len(body)} bytes, at most {max_body_bytes}")
    if not body.strip():
        raise RequestError(400, "body is empty; send a JSON object with 'user' and 'candidates'")
    depth = json_depth(body)
    if depth > MAX_DEPTH:
        raise RequestError(400, f"JSON nested {depth} levels deep, at most {MAX_DEPTH}")

    def refuse_constant(name: str) -> None:
        raise RequestError(400, f"body is not valid JSON: {name} is not a JSON number")

    try:
        return json.loads(body, parse_constant=refuse_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, integers over 4,300 digits
        raise RequestError(400, f"body is not valid JSON: {err}") from None


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    text = json.dumps(value) if isinstance(value, (str, bool, float)) or value is None else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_int(value: Any, field: str) -> int:
    return int(_ints([value], lambda _: field)[0])


def _ints(values: list, field: Callable[[int], str]) -> np.ndarray:
    """int64 array of a list of JSON integers; `field(i)` names element i in the error."""
    if not set(map(type, values)) <= {int}:  # bool is a subclass of int: refused too
        i = next(i for i, v in enumerate(values) if type(v) is not int)
        raise RequestError(400, f"'{field(i)}' must be an integer, got {_shown(values[i])}")
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        i = next(i for i, v in enumerate(values) if not _INT64[0] <= v <= _INT64[1])
        raise RequestError(400, f"'{field(i)}' is {_shown(values[i])}, outside int64") from None


def _int_list(value: Any, field: str, max_len: int) -> np.ndarray:
    if type(value) is not list:
        raise RequestError(400, f"'{field}' must be a list of integers, got {_shown(value)}")
    if len(value) > max_len:
        raise RequestError(413, f"'{field}' holds {len(value)} values, at most {max_len} (--max-history)")
    return _ints(value, lambda i: f"{field}[{i}]")


def _check_times(request_time: int, events: np.ndarray, ts: str, hist: str) -> None:
    if not 0 <= request_time <= MAX_TIME:
        raise RequestError(400, f"'user.{ts}' is {request_time}, outside 0..{MAX_TIME} (unix seconds)")
    outside = (events < 0) | (events > MAX_TIME)
    if outside.any():
        i = int(np.argmax(outside))
        raise RequestError(400, f"'user.{hist}[{i}]' is {events[i]}, outside 0..{MAX_TIME} (unix seconds)")
    decreasing = np.diff(events) < 0
    if decreasing.any():
        i = int(np.argmax(decreasing)) + 1
        raise RequestError(400, f"'user.{hist}[{i}]' is {events[i]}, before the previous event {events[i - 1]}; "
                                "a history is oldest first (non-decreasing times)")


def _candidates(data: DataConfig, candidates: Any, max_candidates: int) -> pa.Table:
    if type(candidates) is not list or not candidates:
        raise RequestError(400, "'candidates' must be a non-empty list of objects")
    if len(candidates) > max_candidates:
        raise RequestError(413, f"{len(candidates)} candidates, at most {max_candidates} per request")
    for i, cand in enumerate(candidates):
        if type(cand) is not dict:
            raise RequestError(400, f"'candidates[{i}]' must be an object, got {_shown(cand)}")
    table_of = {f.name: f.table for f in data.features if f.table is not None}
    columns = {}
    for name in data.columns("candidate"):
        missing = next((i for i, cand in enumerate(candidates) if name not in cand), None)
        if missing is not None:
            raise RequestError(400, f"'candidates[{missing}].{name}' is missing")
        ids = _ints([cand[name] for cand in candidates], lambda i, name=name: f"candidates[{i}].{name}")
        table = data.tables[table_of[name]]
        bad = unmappable(ids, table)
        if bad.any():
            i = int(np.argmax(bad))
            raise RequestError(400, f"'candidates[{i}].{name}': id {ids[i]} is outside 0..{table.num_embeddings - 1} "
                                    f"(table '{table_of[name]}' has num_embeddings={table.num_embeddings}, "
                                    f"oov={table.oov})")
        columns[name] = pa.array(ids)
    return pa.table(columns)


def decode_request(body: bytes, data: DataConfig, limits: RequestLimits) -> ScoringRequest:
    """Parse and validate one request body; raises RequestError naming the field."""
    check_expansion(1 + json_values(body), limits.max_decoded_bytes)
    request = parse_json(body, limits.max_body_bytes)
    if type(request) is not dict or type(request.get("user")) is not dict:
        raise RequestError(400, "request must be a JSON object with 'user' (object) and 'candidates' (list)")
    user = request["user"]
    candidates = _candidates(data, request.get("candidates"), limits.max_candidates)

    fixed = {data.user_id, data.timestamp}
    sequence = [*data.columns("sequence"), data.hist_timestamp]
    columns: dict[str, pa.Array] = {name: candidates.column(name).slice(0, 1) for name in candidates.column_names}
    for name in dict.fromkeys([*sequence, *data.columns("user"), *data.columns("dense"), *fixed]):
        if name not in user:
            raise RequestError(400, f"'user.{name}' is missing")
        value, field = user[name], f"user.{name}"
        if name in sequence:
            columns[name] = pa.array([_int_list(value, field, limits.max_history)], pa.list_(pa.int64()))
        elif name in fixed:
            columns[name] = pa.array([_check_int(value, field)], pa.int64())
        elif name in data.columns("dense"):
            if type(value) not in (int, float):
                raise RequestError(400, f"'{field}' must be a number, got {_shown(value)}")
            number = float(value) if abs(value) < 1e300 else math.inf  # huge ints: refused as not finite below
            columns[name] = pa.array([number], pa.float32())
        else:  # a user/context feature: one id or a list of ids (sum-pooled); stored as a list either way
            ids = _int_list(value, field, limits.max_history) if type(value) is list else [_check_int(value, field)]
            columns[name] = pa.array([ids], pa.list_(pa.int64()))
    _check_times(user[data.timestamp], columns[data.hist_timestamp].values.to_numpy(), data.timestamp,
                 data.hist_timestamp)
    row = pa.table(columns)
    problems = row_problems(row.to_batches()[0], data, labelled=False)
    if problems:
        raise RequestError(400, f"'user.{problems[0].column}': {problems[0].detail(0)}")
    return ScoringRequest(row, candidates)
