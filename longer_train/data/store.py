"""The sequence store: each user's event log stored once, and sample rows that point into it.

Layout (written by `writer.StoreWriter`, read by the loader):

    ROOT/events/part-*.parquet    one row per event, sorted by user then time: `data.user_id`,
                                  `data.hist_timestamp` and one column per sequence feature (hist_item_id, ...)
    ROOT/<split>/part-*.parquet   sample rows: the inline schema without the history columns

A sample row points into the log by its user (`data.user_id`) and request time (`data.timestamp`): its history
is that user's events with a timestamp strictly before the request, oldest first, the newest `data.max_len`
kept: exactly what an inline row stores (`rebuild` produces the inline columns, so validation and collation are
the same code for both layouts). Nothing else is stored per row, so storage grows with events, not with rows x
history length.

Random access. The loader gathers the events of random rows, so the log's value columns are written so they
can be memory-mapped: uncompressed PLAIN pages, one page per column chunk, no nulls (`writer.event_write_options`).
`EventLog` checks that layout in the Parquet metadata and page header and maps the values in place (shared by
every process through the page cache; nothing is copied). A log written by another tool (compressed, several
pages) is still read, column chunk by column chunk into memory, with a log line saying so.

Checks when the log is opened (before any batch): the columns exist with integer types, user ids never
decrease, and timestamps never decrease within a user. A violation is a `SchemaError` naming the events file,
row and column (an unsorted log would silently give wrong histories, so it is never skipped). Ids are checked
per row, on the rebuilt history, by the same rules as inline rows (`schema.check_rows`); an error about an
event names its events file and row too.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import DataConfig
from .row_groups import resolve_files
from .schema import SchemaError, history_columns, is_store_schema

log = logging.getLogger(__name__)

EVENTS = "events"  # the log's folder under the dataset root (data.events)
_PLAIN_TYPES = {"INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}


# ----------------------------------------------------------------------------------------------------
# where the values of a column chunk lie in the file
# ----------------------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _page_sizes(header: bytes) -> tuple[int, int, int] | None:
    """(page type, uncompressed size, compressed size): the first three fields of a Parquet PageHeader
    (Thrift compact protocol: field-delta/type byte, then a zigzag varint for an i32), or None."""
    values, field, pos = [], 0, 0
    try:
        for _ in range(3):
            delta, kind = header[pos] >> 4, header[pos] & 0x0F
            pos += 1
            field += delta
            if kind != 5 or field != len(values) + 1:  # i32 fields 1, 2, 3 in order
                return None
            raw, pos = _varint(header, pos)
            values.append((raw >> 1) ^ -(raw & 1))
    except IndexError:
        return None
    return values[0], values[1], values[2]


def plain_values_at(path: str, meta: pq.FileMetaData, group: int, column: int) -> tuple[int, np.dtype] | None:
    """(byte offset, dtype) of a column chunk's values when they lie in the file as one uncompressed PLAIN
    data page of a required flat int32/int64 column (so they can be memory-mapped); None otherwise."""
    chunk = meta.row_group(group).column(column)
    schema_column = meta.schema.column(column)
    dtype = _PLAIN_TYPES.get(chunk.physical_type)
    if (dtype is None or chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page
            or schema_column.max_definition_level or schema_column.max_repetition_level
            or "PLAIN" not in chunk.encodings or any("DICT" in e for e in chunk.encodings)):
        return None
    size = chunk.num_values * dtype.itemsize
    header_len = chunk.total_compressed_size - size
    if not 0 < header_len <= 4096:
        return None
    with open(path, "rb") as f:
        f.seek(chunk.data_page_offset)
        sizes = _page_sizes(f.read(header_len))
    if sizes != (0, size, size):  # one DATA_PAGE holding every value, nothing else
        return None
    return chunk.data_page_offset + header_len, dtype


# ----------------------------------------------------------------------------------------------------
# the event log
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Chunk:
    """One row group of one events file."""

    path: str
    group: int
    first: int  # global index of its first event
    rows: int
    first_row: int  # row of its first event within the file


def event_files(data: DataConfig) -> list[str]:
    # the same rules as a split: file, folder or glob under root
    try:
        return resolve_files(data.root, data.events)
    except FileNotFoundError as err:
        raise SchemaError(
            f"{err}; the sample files of this split hold no history columns ({', '.join(history_columns(data))}), "
            f"so they need the event log (data.events, default '{EVENTS}') of a sequence store"
        ) from None


class EventLog:
    """The event log of a store, opened and checked once per process; `rebuild` adds the inline history
    columns to sample rows. Pickles without its memory maps (DataLoader workers map the files again)."""

    def __init__(self, files: list[str], data: DataConfig) -> None:
        self.files, self.data = files, data
        self.columns = history_columns(data)
        self.chunks: list[_Chunk] = []
        self.plain: dict[tuple[int, str], tuple[int, np.dtype]] = {}  # (chunk, column) -> mappable values
        users, firsts, counts = [], [], []
        total, last_user, last_where = 0, None, None
        for path in files:
            try:
                parquet = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as err:
                raise SchemaError(f"{path}: cannot read the event log's Parquet file ({err})") from err
            self._check_schema(parquet.schema_arrow, path)
            meta = parquet.metadata
            index = {name: parquet.schema_arrow.get_field_index(name) for name in self.columns}
            first_row = 0
            for g in range(meta.num_row_groups):
                chunk = _Chunk(path, g, total, meta.row_group(g).num_rows, first_row)
                c = len(self.chunks)
                self.chunks.append(chunk)
                for name, col in index.items():
                    where = plain_values_at(path, meta, g, col)
                    if where is not None:
                        self.plain[(c, name)] = where
                user = self._read(parquet, chunk, data.user_id)
                if user.size:
                    step = np.flatnonzero(np.diff(user) < 0)
                    if step.size or (last_user is not None and user[0] < last_user):
                        at = int(step[0]) + 1 if step.size else 0
                        before = int(user[at - 1]) if at else last_user
                        raise SchemaError(
                            f"{path}: row {first_row + at}, column '{data.user_id}': user {int(user[at])} after user "
                            f"{before}{'' if at else f' (end of {last_where})'}; the event log must be sorted by "
                            "user, then time")
                    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
                    if last_user is not None and user[0] == last_user:  # a user continued from the last chunk
                        counts[-1][-1] += int(starts[1] if len(starts) > 1 else len(user))
                        starts = starts[1:]
                    if len(starts):  # (no empty arrays: counts[-1] is always the last user's)
                        users.append(user[starts])
                        firsts.append(total + starts)
                        counts.append(np.diff(np.r_[starts, len(user)]))
                    last_user, last_where = int(user[-1]), path
                total += chunk.rows
                first_row += chunk.rows
        self.num_events = total
        self.users = np.concatenate(users) if users else np.zeros(0, np.int64)
        self.first = np.concatenate(firsts) if firsts else np.zeros(0, np.int64)
        self.count = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        self.starts = np.array([c.first for c in self.chunks] + [total], dtype=np.int64)
        self._maps: dict = {}
        self._check_time_order()
        read = [n for n in self.columns if any((c, n) not in self.plain for c in range(len(self.chunks)))]
        if read:
            log.info("event log %s: columns %s are not stored as one uncompressed PLAIN page per row group; they "
                     "are read into memory instead of memory-mapped", files[0], ", ".join(read))

    # -- opening --------------------------------------------------------------------------------------
    def _check_schema(self, schema: pa.Schema, path: str) -> None:
        for name in [self.data.user_id, *self.columns]:
            found = schema.get_all_field_indices(name)
            what = ("user id" if name == self.data.user_id else
                    "event timestamps" if name == self.data.hist_timestamp else "sequence feature")
            if not found:
                raise SchemaError(f"{path}: missing column '{name}' ({what}) in the event log; the file has "
                                  f"columns: {', '.join(schema.names)}")
            tp = schema.field(found[0]).type
            ok = pa.types.is_int64(tp) if name in (self.data.user_id, self.data.hist_timestamp) else (
                pa.types.is_signed_integer(tp))
            if len(found) > 1 or not ok:
                expected = "int64" if name in (self.data.user_id, self.data.hist_timestamp) else "a signed integer"
                raise SchemaError(f"{path}: column '{name}' ({what}) of the event log has type {tp}, expected "
                                  f"{expected}, once (one value per event, not a list)")

    def _read(self, parquet: pq.ParquetFile, chunk: _Chunk, name: str) -> np.ndarray:
        column = parquet.read_row_group(chunk.group, columns=[name]).column(0)
        if column.null_count:
            row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
            raise SchemaError(f"{chunk.path}: row {chunk.first_row + row}, column '{name}': value is null; the event "
                              "log holds no nulls")
        return column.to_numpy().astype(np.int64, copy=False)

    def _check_time_order(self) -> None:
        """Timestamps never decrease within a user (checked chunk by chunk, across chunk boundaries too)."""
        ts_name = self.data.hist_timestamp
        prev_ts = None
        for c, chunk in enumerate(self.chunks):
            ts = self._column_chunk(c, ts_name)
            lo, hi = chunk.first, chunk.first + chunk.rows
            # events whose predecessor (global index - 1) belongs to the same user: all but each user's first
            same = np.ones(chunk.rows, dtype=bool)
            firsts = self.first[(self.first >= lo) & (self.first < hi)]
            same[firsts - lo] = False
            prev = np.empty(chunk.rows, np.int64)
            prev[1:] = ts[:-1]
            if chunk.rows:
                prev[0] = prev_ts if prev_ts is not None else np.iinfo(np.int64).min
            bad = np.flatnonzero(same & (ts < prev))
            if bad.size:
                i = int(bad[0])
                owner = int(np.searchsorted(self.first, lo + i, side="right") - 1)
                raise SchemaError(
                    f"{chunk.path}: row {chunk.first_row + i}, column '{ts_name}': event at {int(ts[i])} comes after "
                    f"one at {int(prev[i])} of the same user {int(self.users[owner])}; the event log must be "
                    "sorted by user, then time")
            if chunk.rows:
                prev_ts = int(ts[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    # -- reading values -------------------------------------------------------------------------------
    def _column_chunk(self, c: int, name: str) -> np.ndarray:
        key = (c, name)
        if key not in self._maps:
            chunk = self.chunks[c]
            if key in self.plain:
                if chunk.path not in self._maps:
                    self._maps[chunk.path] = np.memmap(chunk.path, dtype=np.uint8, mode="r")
                offset, dtype = self.plain[key]
                self._maps[key] = np.frombuffer(self._maps[chunk.path], dtype=dtype, count=chunk.rows, offset=offset)
            else:
                self._maps[key] = self._read(pq.ParquetFile(chunk.path), chunk, name)
        return self._maps[key]

    def locate(self, index: np.ndarray) -> list[tuple[int, np.ndarray | None, np.ndarray]]:
        """Global event indices -> per chunk holding some: (chunk, their positions in `index` (None: all of
        them), their indices within the chunk). Computed once for all the columns read at the same indices."""
        if len(self.chunks) == 1 or not len(index):
            return [(0, None, index)]
        chunk = np.searchsorted(self.starts, index, side="right") - 1
        if (chunk == chunk[0]).all():
            return [(int(chunk[0]), None, index - self.starts[chunk[0]])]
        located = []
        for c in np.unique(chunk):
            mine = np.flatnonzero(chunk == c)
            located.append((int(c), mine, index[mine] - self.starts[c]))
        return located

    def values(self, name: str, index: np.ndarray,
               located: list[tuple[int, np.ndarray | None, np.ndarray]] | None = None) -> np.ndarray:
        """int64 values of column `name` at global event indices `index` (`located`: `locate(index)`, when the
        caller reads several columns there)."""
        out = np.empty(len(index), dtype=np.int64)
        if not len(index):
            return out
        for c, mine, local in self.locate(index) if located is None else located:
            if mine is None:
                out[:] = self._column_chunk(c, name)[local]
            else:
                out[mine] = self._column_chunk(c, name)[local]
        return out

    def where(self, index: int) -> str:
        """`file row n` of a global event index."""
        c = int(np.searchsorted(self.starts, index, side="right") - 1)
        chunk = self.chunks[c]
        return f"{chunk.path} row {chunk.first_row + index - chunk.first}"

    # -- histories --------------------------------------------------------------------------------------
    def user_events(self, user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi): the global range of each user's events (empty for a user without any)."""
        pos = np.minimum(np.searchsorted(self.users, user), max(len(self.users) - 1, 0))
        found = (self.users[pos] == user) if len(self.users) else np.zeros(len(user), bool)
        lo = np.where(found, self.first[pos] if len(self.users) else 0, 0)
        return lo, lo + np.where(found, self.count[pos] if len(self.users) else 0, 0)

    def before(self, user: np.ndarray, request: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, end): each row's user's first event and the first of its events at or after the request time,
        so [lo, end) is the whole history strictly before the request (a vectorised binary search)."""
        lo, hi = self.user_events(user)
        a, b = lo.copy(), hi.copy()
        active = np.flatnonzero(a < b)
        while active.size:
            mid = (a[active] + b[active]) // 2
            earlier = self.values(self.data.hist_timestamp, mid) < request[active]
            a[active] = np.where(earlier, mid + 1, a[active])
            b[active] = np.where(earlier, b[active], mid)
            active = active[a[active] < b[active]]
        return lo, a

    def _rows_keys(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """User ids and request times of sample rows (nulls as 0: check_rows reports those rows)."""
        return tuple(pc.fill_null(table.column(n), 0).to_numpy().astype(np.int64, copy=False)
                     for n in (self.data.user_id, self.data.timestamp))

    def history_lengths(self, table: pa.Table) -> np.ndarray:
        """Full history length of each sample row (before the max_len cut)."""
        lo, end = self.before(*self._rows_keys(table))
        return end - lo

    def rebuild(self, table: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """(sample rows with the inline history columns added, the global event index of every history value in
        row order): the newest data.max_len events strictly before each row's request."""
        lo, end = self.before(*self._rows_keys(table))
        start = np.maximum(lo, end - self.data.max_len)
        length = end - start
        offsets = np.concatenate([[0], np.cumsum(length)])
        index = np.repeat(start - offsets[:-1], length) + np.arange(offsets[-1])
        arrow_offsets = pa.array(offsets.astype(np.int32))
        located = self.locate(index)
        for name in self.columns:
            values = pa.array(self.values(name, index, located))
            table = table.append_column(pa.field(name, pa.list_(pa.int64())),
                                        pa.ListArray.from_arrays(arrow_offsets, values))
        return table, index


def open_event_log(data: DataConfig) -> EventLog:
    return EventLog(event_files(data), data)


def read_inline(root: str | Path, split: str, data: DataConfig) -> pa.Table:
    """A whole split of a store in the inline schema (histories cut to data.max_len): for tests, small exports
    and scoring requests. Reads everything into memory."""
    data = dataclasses.replace(data, root=str(root))
    table = pq.read_table(resolve_files(str(root), split))
    if not is_store_schema(table.schema, data):
        return table
    return open_event_log(data).rebuild(table)[0]
