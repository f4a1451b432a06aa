"""Reading the raw text of public datasets (plain, .gz, or a member of a zip) in blocks of lines, in bounded memory
whatever a line's length, every line counted: the parsing of integer, timestamp and float columns with pyarrow
compute, and the malformed lines skipped with a count and the first example (file:line, column). Used by the
sources (`sources.py`); the errors of preparing a dataset (`PrepareError`) are raised from here on."""

from __future__ import annotations

import gzip
import re
import zipfile
import zlib
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

BLOCK_BYTES = 8 << 20  # text read per block
MAX_LINE_BYTES = 1 << 20  # a longer line is malformed: skipped and counted, read past in blocks (bounded memory)


class PrepareError(ValueError):
    """A source file is missing, ambiguous or unreadable, the output cannot be written, or a split would be empty
    (the message names the file and, where there is one, the line)."""


UNREADABLE = (OSError, EOFError, zlib.error, zipfile.BadZipFile, pa.ArrowException, UnicodeDecodeError)


def parse_size(text: str) -> int:
    """'2GB', '512MB', '1.5GiB', '1000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise PrepareError(f"memory budget {text!r}: expected a size such as 2GB or 512MB")
    return int(float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_"))


@dataclass(frozen=True)
class TextFile:
    """A text file on disk, gzipped (`.gz`) or not, or a member of a zip archive."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    @contextmanager
    def open_binary(self) -> Iterator[BinaryIO]:
        """The file's bytes (decompressed); an error while opening is a PrepareError naming it (errors while
        reading are the reader's to name, with the line reached)."""
        with ExitStack() as stack:
            try:
                if self.member is None:
                    opener = gzip.open if self.path.suffix == ".gz" else open
                    f = stack.enter_context(opener(self.path, "rb"))
                else:
                    archive = stack.enter_context(zipfile.ZipFile(self.path))
                    f = stack.enter_context(archive.open(self.member))
            except UNREADABLE as err:
                raise PrepareError(f"{self.name}: cannot read ({describe_error(err)})") from None
            yield f

    def sibling(self, name: str) -> TextFile | None:
        """The file `name` (or `name.gz`) in the same folder of the disk or the archive, if there is one."""
        if self.member is None:
            for candidate in (self.path.parent / name, self.path.parent / f"{name}.gz"):
                if candidate.is_file():
                    return TextFile(candidate)
            return None
        folder = self.member.rpartition("/")[0]
        wanted = f"{folder}/{name}" if folder else name
        return TextFile(self.path, wanted) if wanted in zip_names(self.path) else None


def describe_error(err: BaseException) -> str:
    kind = {gzip.BadGzipFile: "not a valid gzip file", EOFError: "the compressed data ends early (truncated)",
            zlib.error: "corrupt compressed data", zipfile.BadZipFile: "not a valid zip archive"}
    for tp, text in kind.items():
        if isinstance(err, tp):
            return f"{text}: {err}" if str(err) else text
    return f"{type(err).__name__}: {err}"


def zip_names(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as z:
            return z.namelist()
    except UNREADABLE as err:
        raise PrepareError(f"{archive}: cannot read ({describe_error(err)})") from None


@dataclass
class Skipped:
    """Lines left out, by reason, with the first example of each (file:line and what was wrong)."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)
    first_line: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, where: str, count: int = 1, line: int | None = None) -> None:
        """Count `count` lines; `where` describes one of them (line `line`): the example kept is the earliest."""
        if count:
            self.counts[reason] = self.counts.get(reason, 0) + count
            if reason not in self.first or line is not None and line < self.first_line.get(reason, line + 1):
                self.first[reason] = where
                if line is not None:
                    self.first_line[reason] = line


# ----------------------------------------------------------------------------------------------------
# reading delimited text in blocks of lines
# ----------------------------------------------------------------------------------------------------
@dataclass
class Block:
    """Lines `number[0]..` of a file, split into fields, and the rows (lines) still valid."""

    text: TextFile
    number: np.ndarray  # line number (1-based) of each line
    fields: list[pa.Array]  # field k of each line, trimmed ("" where the line has fewer fields)
    valid: np.ndarray  # bool per line
    typed: list | None = None  # the fast path: every field already parsed (numpy, or trimmed strings)

    def reject(self, bad: np.ndarray, column: int, what: Callable[[str], str], skipped: Skipped) -> None:
        """Mark lines `bad` (among the valid ones) malformed; `what(value)` says why (first one only)."""
        bad = bad & self.valid
        if bad.any():
            i = int(np.argmax(bad))
            value = (self.fields[column] if self.typed is None else self.typed[column])[i]
            value = value.as_py() if isinstance(value, pa.Scalar) else value.item()
            skipped.add("malformed_lines", f"{self.text.name}:{self.number[i]}, column {column + 1}: {what(value)}",
                        int(bad.sum()), int(self.number[i]))
            self.valid &= ~bad


def _lines(text: TextFile, skipped: Skipped) -> Iterator[tuple[bytes, np.ndarray, int]]:
    """(a block of whole lines as bytes, the end of each line (its \\n, or the end of the data for a last line
    without one), number of the first line), for the whole file. A line longer than MAX_LINE_BYTES is counted
    malformed and skipped without being held: memory stays within a block and a line whatever the input."""
    number, rest = 1, b""
    with text.open_binary() as f:

        def read() -> bytes:
            try:
                return f.read(BLOCK_BYTES)
            except UNREADABLE as err:
                raise PrepareError(f"{text.name}: cannot read past line {number - 1} ({describe_error(err)})") from None

        while True:
            chunk = read()
            data = rest + chunk
            if not chunk:
                if data:
                    yield data, np.array([len(data)]), number
                return
            ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
            if not len(ends) and len(data) > MAX_LINE_BYTES:
                skipped.add("malformed_lines", f"{text.name}:{number}: longer than {MAX_LINE_BYTES} bytes", 1, number)
                while (chunk := read()) and b"\n" not in chunk:
                    pass
                rest, number = chunk[chunk.find(b"\n") + 1:] if chunk else b"", number + 1
                continue
            if not len(ends):
                rest = data
                continue
            cut = int(ends[-1]) + 1
            yield data[:cut], ends, number
            number += len(ends)
            rest = data[cut:]


def _to_strings(data: bytes, ends: np.ndarray) -> pa.StringArray:
    """The lines of `data` as strings over the same bytes (no copy), each with its line break (the fields are
    trimmed later); latin-1 text with bytes >= 0x80 is re-encoded as UTF-8 first (every byte is valid latin-1)."""
    if (np.frombuffer(data, dtype=np.uint8) >= 0x80).any():
        data = data.decode("latin-1").encode("utf-8")
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
        ends = ends if len(ends) and ends[-1] == len(data) - 1 else np.r_[ends, len(data)]
    offsets = np.concatenate([[0], np.minimum(ends + 1, len(data))]).astype(np.int32)
    return pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))


def _typed(data: bytes, ends: np.ndarray, sep: str, types: list[pa.DataType]) -> list[np.ndarray] | None:
    """The fast path: a block whose every line is ASCII, not blank and has exactly the fields expected, parsed by
    pyarrow's CSV reader straight into typed columns (strings trimmed). None when the block needs the line-by-line
    path (any odd line: a value that does not parse, a blank line, \\r, quotes, another field count)."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if len(sep) != 1 or (buf >= 0x80).any() or (buf == 13).any():
        return None
    starts = np.r_[0, ends[:-1] + 1]
    if (ends - starts < len(types) * 2 - 1).any():  # blank or too short to hold every field
        return None
    count = np.add.reduceat((buf == ord(sep)).astype(np.int32), starts)
    if (count != len(types) - 1).any():
        return None
    names = [f"f{k}" for k in range(len(types))]
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data), read_options=pacsv.ReadOptions(column_names=names, block_size=len(data) + 1),
            parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=dict(zip(names, types)), null_values=[],
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except pa.ArrowInvalid:
        return None
    if table.num_rows != len(ends):
        return None
    return [pc.utf8_trim_whitespace(c).combine_chunks() if pa.types.is_string(t) else c.to_numpy()
            for c, t in zip(table.columns, types)]


def read_blocks(text: TextFile, sep: str, types: list[pa.DataType], skipped: Skipped,
            header: str | None = None) -> Iterator[Block]:
    """Blocks of lines split on `sep` into len(types) fields; a line with another number of fields is counted
    malformed, an empty line is ignored. `header`, if given, must be the first line."""
    fields = len(types)
    for data, ends, first in _lines(text, skipped):
        if first == 1 and header is not None:
            found = data[: int(ends[0])].decode("latin-1").strip()
            if found != header:
                raise PrepareError(f"{text.name}:1: header is {found!r}, expected {header!r}")
            data, ends, first = data[int(ends[0]) + 1:], ends[1:] - int(ends[0]) - 1, 2
            if not len(ends):
                continue
        number = np.arange(first, first + len(ends))
        typed = _typed(data, ends, sep, types)
        if typed is not None:
            yield Block(text, number, [], np.ones(len(ends), dtype=bool), typed)
            continue
        lines = _to_strings(data, ends)
        split = pc.split_pattern(lines, pattern=sep)
        count = pc.list_value_length(split).to_numpy()
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(lines)), 0).to_numpy(zero_copy_only=False)
        wrong = (count != fields) & ~empty
        if wrong.any():
            i = int(np.argmax(wrong))
            skipped.add("malformed_lines", f"{text.name}:{number[i]}: {count[i]} fields, expected {fields}",
                        int(wrong.sum()), int(number[i]))
        valid = (count == fields) & ~empty
        padded = pc.if_else(pa.array(valid), split, pa.scalar([""] * fields, pa.list_(pa.string())))
        yield Block(text, number, [pc.utf8_trim_whitespace(pc.list_element(padded, k)) for k in range(fields)], valid)
_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def parse_ints(block: Block, column: int, skipped: Skipped) -> np.ndarray:
    """Field `column` as int64; lines where it is not an integer, or is beyond int64, are rejected."""
    if block.typed is not None:
        return block.typed[column]
    values = block.fields[column]
    syntax = pc.match_substring_regex(values, _INT).to_numpy(zero_copy_only=False)
    block.reject(~syntax, column, lambda v: f"{v!r} is not an integer", skipped)
    digits = pc.utf8_length(pc.utf8_ltrim(values, "+-0")).to_numpy()
    beyond = block.valid & (digits > 19)
    for i in np.flatnonzero(block.valid & (digits == 19)):  # 19 digits: may not fit in int64 (checked exactly)
        beyond[i] = not -(2**63) <= int(values[int(i)].as_py()) < 2**63
    block.reject(beyond, column, lambda v: f"{_abbreviated(v.strip())} is beyond the int64 range", skipped)
    clean = pc.if_else(pa.array(block.valid), pc.utf8_ltrim(values, "+"), "0")
    return pc.cast(clean, pa.int64()).to_numpy()


def _abbreviated(text: str, keep: int = 24) -> str:
    return text if len(text) <= 2 * keep else f"{text[:keep]}...{text[-keep:]} ({len(text)} characters)"


def parse_timestamps(block: Block, column: int, skipped: Skipped) -> np.ndarray:
    """Field `column` as a timestamp: an int64 that is not negative (the loader takes differences of them)."""
    ts = parse_ints(block, column, skipped)
    block.reject(ts < 0, column, lambda v: f"timestamp {v} is negative", skipped)
    return ts


def parse_floats(block: Block, column: int, skipped: Skipped, low: float, high: float, name: str) -> np.ndarray:
    if block.typed is not None:
        number = block.typed[column]
    else:
        values = block.fields[column]
        syntax = pc.match_substring_regex(values, _FLOAT).to_numpy(zero_copy_only=False)
        block.reject(~syntax, column, lambda v: f"{name} {v!r} is not a number", skipped)
        number = pc.cast(pc.if_else(pa.array(block.valid), pc.utf8_ltrim(values, "+"), "0"), pa.float64()).to_numpy()
    block.reject(~((number >= low) & (number <= high)), column, lambda v: f"{name} {v} is outside {low:g}..{high:g}",
                 skipped)
    return number
