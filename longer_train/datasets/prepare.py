"""Prepare public datasets as a sequence store (store.py): MovieLens (ML-100K, ML-1M, ML-20M / ml-latest) and the
Taobao UserBehavior log.

Each interaction is one sample row (user, item, category, time, label); each user's events are stored once in the
event log, sorted by (user, time, item id, file order); the loader rebuilds a row's history as the user's events
strictly before it. Raw ids are remapped to dense ids whose vocabularies are written beside the data; rows are split
by global time quantiles into train/valid/test. See docs/data.md, "Public datasets".

Streaming, in bounded memory (`memory_budget`), whatever the input size:
1. read: the text (plain, .gz or a zip member) is read in blocks of lines and parsed with pyarrow compute, every
   line counted: malformed lines (field count, integer syntax, ids beyond int64, ratings, behaviors) are skipped and
   counted with the first example (file:line, column); valid rows go to a DuckDB table on disk;
2. DuckDB (memory_limit = most of the budget, temp files next to OUT, so its sorts and joins spill to disk instead
   of failing) computes the vocabularies, the time split's cut points, the user sample and the row caps;
3. the event log (in order) and each split's rows (in a seeded shuffle order) stream back as Arrow batches into
   `writer.StoreWriter`, and the dataset card (card.py) beside them.
Engine choice (measured, benchmarks/results/prepare_cpu.md): pyarrow, DuckDB and Polars all parse the CSV at about
the same speed; DuckDB sorts out of core under a configurable memory limit, which the row order needs.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
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
import pyarrow.parquet as pq

from .card import card, percentiles_of_counts
from .writer import SPLIT_QUANTILES, SPLITS, OutputError, StoreWriter, event_schema, id_type, is_replaceable

DATASETS = ("movielens", "taobao")
SHUFFLE_SEED = 0  # rows are shuffled within each split by a hash of (line, this seed): the output is deterministic
SAMPLE_USERS_SEED = 0  # `sample_users` draws its users with this fixed seed
BLOCK_BYTES = 8 << 20  # text read per block
MAX_LINE_BYTES = 1 << 20  # a longer line is malformed: skipped and counted, read past in blocks (bounded memory)
DEFAULT_BUDGET = "2GB"
_RESERVE = 400 << 20  # of the budget, left to Python, pyarrow blocks and the writers; DuckDB gets the rest

ML_ACTIONS = ("1", "2", "3", "4", "5")  # hist_action = floor(rating) - 1 (0.5 counts as 1 star)
ML_POSITIVE_RATING = 4.0
ML100K_GENRES = (  # the 19 genre flags of u.item, in order (ml-100k README / u.genre)
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
UNKNOWN_GENRE = "unknown"

TAOBAO_ACTIONS = ("pv", "fav", "cart", "buy")  # hist_action = index
TAOBAO_POSITIVE = ("fav", "cart", "buy")
TAOBAO_WINDOW = (1511539200, 1512316800)  # [2017-11-25 00:00, 2017-12-04 00:00) Beijing time (UTC+8)


class PrepareError(ValueError):
    """A source file is missing, ambiguous or unreadable, the output cannot be written, or a split would be empty
    (the message names the file and, where there is one, the line)."""


_UNREADABLE = (OSError, EOFError, zlib.error, zipfile.BadZipFile, pa.ArrowException, UnicodeDecodeError)


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
            except _UNREADABLE as err:
                raise PrepareError(f"{self.name}: cannot read ({_describe(err)})") from None
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
        return TextFile(self.path, wanted) if wanted in _zip_names(self.path) else None


def _describe(err: BaseException) -> str:
    kind = {gzip.BadGzipFile: "not a valid gzip file", EOFError: "the compressed data ends early (truncated)",
            zlib.error: "corrupt compressed data", zipfile.BadZipFile: "not a valid zip archive"}
    for tp, text in kind.items():
        if isinstance(err, tp):
            return f"{text}: {err}" if str(err) else text
    return f"{type(err).__name__}: {err}"


def _zip_names(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as z:
            return z.namelist()
    except _UNREADABLE as err:
        raise PrepareError(f"{archive}: cannot read ({_describe(err)})") from None


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
class _Block:
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
            except _UNREADABLE as err:
                raise PrepareError(f"{text.name}: cannot read past line {number - 1} ({_describe(err)})") from None

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


def _blocks(text: TextFile, sep: str, types: list[pa.DataType], skipped: Skipped,
            header: str | None = None) -> Iterator[_Block]:
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
            yield _Block(text, number, [], np.ones(len(ends), dtype=bool), typed)
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
        yield _Block(text, number, [pc.utf8_trim_whitespace(pc.list_element(padded, k)) for k in range(fields)], valid)
_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def _ints(block: _Block, column: int, skipped: Skipped) -> np.ndarray:
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


def _timestamps(block: _Block, column: int, skipped: Skipped) -> np.ndarray:
    """Field `column` as a timestamp: an int64 that is not negative (the loader takes differences of them)."""
    ts = _ints(block, column, skipped)
    block.reject(ts < 0, column, lambda v: f"timestamp {v} is negative", skipped)
    return ts


def _floats(block: _Block, column: int, skipped: Skipped, low: float, high: float, name: str) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------------
# datasets: each yields Arrow blocks of valid interactions with raw ids
# ----------------------------------------------------------------------------------------------------
RAW = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("category", pa.int64()), ("action", pa.int8()),
                 ("ts", pa.int64()), ("label", pa.float32()), ("line", pa.int64())])


@dataclass
class Source:
    """What a reader found: how to stream its interactions, and what the dataset card says about them."""

    file: str  # the interactions file (named in errors)
    blocks: Callable[[Skipped], Iterator[pa.Table]]  # valid interactions, RAW schema; counts skips as it goes
    actions: tuple[str, ...]
    info: dict  # files and format (meta.json "source")
    notes: list[str]
    category_names: list[str] | None = None  # raw category = index into these (MovieLens genres); None: raw id
    genre_movies: np.ndarray | None = None  # movie ids of the genre file (MovieLens)
    finish: Callable[[Skipped], None] = lambda skipped: None  # adds counts known only at the end


def _interactions(block: _Block, **columns: np.ndarray) -> pa.Table:
    keep = block.valid
    return pa.table({name: pa.array(values[keep], RAW.field(name).type) for name, values in columns.items()}
                    | {"line": pa.array(block.number[keep], pa.int64())}).select(RAW.names)


@dataclass(frozen=True)
class _MovieLensFormat:
    release: str
    sep: str
    header: str | None
    genre_file: str


_ML_FORMATS = {  # ratings file name -> format
    "ratings.dat": _MovieLensFormat("ML-1M", "::", None, "movies.dat"),
    "u.data": _MovieLensFormat("ML-100K", "\t", None, "u.item"),
    "ratings.csv": _MovieLensFormat("ML-20M / ml-latest", ",", "userId,movieId,rating,timestamp", "movies.csv"),
}


def _find_in_zip(archive: Path, names: tuple[str, ...]) -> TextFile | None:
    members = _zip_names(archive)
    for name in names:
        for member in sorted(members):
            if member.rpartition("/")[2] in (name, f"{name}.gz"):
                return TextFile(archive, member)
    return None


def find_source(src: str | Path, names: tuple[str, ...]) -> TextFile:
    """The first of `names` (also `.gz`) found as `src` itself, in the folder `src`, or in a zip archive
    (`src` or a `*.zip` in the folder `src`)."""
    src = Path(src)
    if src.is_file():
        if src.suffix == ".zip":
            found = _find_in_zip(src, names)
        else:
            found = TextFile(src) if src.name.removesuffix(".gz") in names else None
    elif src.is_dir():
        found = next((TextFile(src / f) for n in names for f in (n, f"{n}.gz") if (src / f).is_file()), None)
        zips = iter(sorted(src.glob("*.zip")))
        while found is None and (archive := next(zips, None)) is not None:
            found = _find_in_zip(archive, names)
    else:
        raise PrepareError(f"{src}: no such file or folder")
    if found is None:
        wanted = ", ".join(f"{n}[.gz]" for n in names)
        raise PrepareError(f"{src}: found none of {wanted}, directly or in a .zip archive")
    return found


def _genres(text: TextFile) -> dict[int, str]:
    """Raw movie id -> its first genre, from movies.dat, u.item or movies.csv (a line that cannot be decoded or
    read is a PrepareError naming the file and line)."""
    is_csv = text.name.endswith((".csv", ".csv.gz"))
    encoding = "utf-8" if is_csv else "latin-1"
    genres, number = {}, [0]

    def decoded(raw: BinaryIO) -> Iterator[str]:
        for number[0], line in enumerate(raw, 1):
            try:
                yield line.decode(encoding)
            except UnicodeDecodeError as err:
                raise PrepareError(f"{text.name}:{number[0]}: cannot decode the text as {encoding.upper()} "
                                   f"({err.reason} at byte {err.start} of the line)") from None

    try:
        with text.open_binary() as raw:
            lines = csv.reader(decoded(raw)) if is_csv else (line.rstrip("\r\n") for line in decoded(raw))
            for line in lines:
                try:
                    movie, genre = _genre_of(line)
                except (ValueError, IndexError) as err:
                    raise PrepareError(
                        f"{text.name}:{number[0]}: cannot read the movie id and genres ({err})") from None
                if movie is not None:
                    genres[movie] = genre
    except (csv.Error, *_UNREADABLE[:-1]) as err:
        raise PrepareError(f"{text.name}: cannot read past line {number[0]} ({_describe(err)})") from None
    return genres


def _genre_of(line: list[str] | str) -> tuple[int | None, str]:
    """(movie id, first genre) of one line of movies.csv (a parsed list), movies.dat or u.item; the csv
    header and empty lines give (None, "")."""
    if isinstance(line, list):  # movies.csv: movieId,title,genres
        if not line or line[0] == "movieId":
            return None, ""
        return int(line[0]), line[2].split("|")[0]
    if not line.strip():
        return None, ""
    if "::" in line:  # movies.dat: MovieID::Title::Genres
        fields = line.split("::")
        return int(fields[0]), fields[-1].split("|")[0]
    fields = line.split("|")  # u.item: id|title|release|video release|url|19 genre flags
    flags = fields[-len(ML100K_GENRES):]
    first = next((g for g, flag in zip(ML100K_GENRES, flags) if flag == "1"), UNKNOWN_GENRE)
    return int(fields[0]), first


def read_movielens(src: str | Path) -> Source:
    """Ratings (label = rating >= 4, action = rating bucket) with the movie's first genre as category."""
    ratings = find_source(src, tuple(_ML_FORMATS))
    fmt = _ML_FORMATS[Path(ratings.member or ratings.path).name.removesuffix(".gz")]
    genre_text = ratings.sibling(fmt.genre_file)
    genres = _genres(genre_text) if genre_text else {}
    names = sorted(set(genres.values()) | {UNKNOWN_GENRE})
    movies = np.array(sorted(genres), dtype=np.int64)
    code_of_movie = np.array([names.index(genres[m]) for m in movies.tolist()], dtype=np.int64)
    unknown = names.index(UNKNOWN_GENRE)

    def blocks(skipped: Skipped) -> Iterator[pa.Table]:
        for block in _blocks(ratings, fmt.sep, [pa.int64(), pa.int64(), pa.float64(), pa.int64()], skipped, fmt.header):
            user, item = _ints(block, 0, skipped), _ints(block, 1, skipped)
            rating = _floats(block, 2, skipped, 0.5, 5.0, "rating")
            ts = _timestamps(block, 3, skipped)
            pos = np.minimum(np.searchsorted(movies, item), max(len(movies) - 1, 0))
            known = (movies[pos] == item) if len(movies) else np.zeros(len(item), bool)
            category = np.where(known, code_of_movie[pos] if len(movies) else 0, unknown)
            yield _interactions(block, user=user, item=item, category=category,
                                action=(np.maximum(np.floor(rating), 1) - 1).astype(np.int8), ts=ts,
                                label=(rating >= ML_POSITIVE_RATING).astype(np.float32))

    if genre_text:
        genre_note = (f"category = the movie's first genre in {genre_text.name}; rated movies that are not in it "
                      f"have category '{UNKNOWN_GENRE}' (count: meta.json source.items_without_genre)")
    else:
        genre_note = (f"no {fmt.genre_file} beside the ratings: every movie has category '{UNKNOWN_GENRE}' "
                      "(the category feature carries no information)")
    return Source(
        file=ratings.name, blocks=blocks, actions=ML_ACTIONS,
        info={"format": fmt.release, "ratings": ratings.name, "genres": genre_text.name if genre_text else None},
        notes=[f"label = 1 if rating >= {ML_POSITIVE_RATING:g} else 0",
               "hist_action = floor(rating) - 1 (ratings 1..5 -> 0..4; half stars round down, 0.5 -> 0)",
               genre_note],
        category_names=names, genre_movies=movies,
    )


def read_taobao(src: str | Path) -> Source:
    """UserBehavior.csv rows (user,item,category,behavior,timestamp); label = behavior in {fav, cart, buy}.
    Malformed lines and rows outside the official 9-day window are skipped and counted."""
    src = Path(src)
    if src.is_dir():
        found = sorted(p for p in src.iterdir() if p.name.endswith((".csv", ".csv.gz")))
        if len(found) != 1:
            raise PrepareError(f"{src}: expected exactly one .csv or .csv.gz file, found {len(found)}")
        src = found[0]
    if not src.is_file():
        raise PrepareError(f"{src}: no such file")
    text = TextFile(src)
    outside = {"count": 0, "min": None, "max": None}
    positive = np.array([TAOBAO_ACTIONS.index(b) for b in TAOBAO_POSITIVE])

    def blocks(skipped: Skipped) -> Iterator[pa.Table]:
        for block in _blocks(text, ",", [pa.int64()] * 3 + [pa.string(), pa.int64()], skipped):
            user, item, category = (_ints(block, k, skipped) for k in range(3))
            behavior = block.fields[3] if block.typed is None else block.typed[3]
            action = pc.index_in(behavior, value_set=pa.array(TAOBAO_ACTIONS))
            block.reject(action.is_null().to_numpy(zero_copy_only=False), 3, lambda v: (
                f"unknown behavior {v!r}, expected one of {', '.join(TAOBAO_ACTIONS)}"), skipped)
            action = action.fill_null(0).to_numpy().astype(np.int8)
            ts = _timestamps(block, 4, skipped)
            out = block.valid & ((ts < TAOBAO_WINDOW[0]) | (ts >= TAOBAO_WINDOW[1]))
            if out.any():
                outside["count"] += int(out.sum())
                lo, hi = int(ts[out].min()), int(ts[out].max())
                outside["min"] = lo if outside["min"] is None else min(outside["min"], lo)
                outside["max"] = hi if outside["max"] is None else max(outside["max"], hi)
                block.valid &= ~out
            yield _interactions(block, user=user, item=item, category=category, action=action, ts=ts,
                                label=np.isin(action, positive).astype(np.float32))

    def finish(skipped: Skipped) -> None:
        skipped.add("out_of_window", f"{text.name}: timestamps {outside['min']}..{outside['max']} outside "
                    f"[{TAOBAO_WINDOW[0]}, {TAOBAO_WINDOW[1]})", outside["count"])

    return Source(
        file=text.name, blocks=blocks, actions=TAOBAO_ACTIONS,
        info={"format": "Taobao UserBehavior", "behaviors": text.name},
        notes=[f"label = 1 if behavior in {{{', '.join(TAOBAO_POSITIVE)}}} else 0 (pv)",
               "hist_action = behavior: " + ", ".join(f"{b} {i}" for i, b in enumerate(TAOBAO_ACTIONS)),
               f"rows with timestamps outside [{TAOBAO_WINDOW[0]}, {TAOBAO_WINDOW[1]}) (2017-11-25 .. 2017-12-03, "
               "Beijing time) are dropped",
               "a user cut off at the end of the file keeps the rows that are there (the file is in time "
               "order within a user, so only their later events are missing)"],
        finish=finish,
    )


READERS: dict[str, Callable[[str | Path], Source]] = {"movielens": read_movielens, "taobao": read_taobao}


# ----------------------------------------------------------------------------------------------------
# the pipeline
# ----------------------------------------------------------------------------------------------------
def _check_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
        if not (out.is_dir() and is_replaceable(out)):
            raise FileExistsError(f"{out} is not a dataset written by longer-data; refusing to replace it "
                                  "even with --force")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise PrepareError(f"{out}: cannot create the output folder: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK) and not out.exists():
                raise PrepareError(f"{out}: cannot create the output folder: {parent} is not writable")
            break


def _remove_leftovers(out: Path) -> None:
    """Remove the work and temporary folders (`.<out>.work-<pid>`, `.<out>.tmp-<pid>`) that a prepare of the same
    OUT left when it was killed: those whose process is gone. A running one's are left alone."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(work|tmp)-(\d+)$")
    if not out.parent.is_dir():
        return
    for entry in out.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or int(match.group(2)) == os.getpid():
            continue
        try:
            os.kill(int(match.group(2)), 0)
            continue  # that process still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # someone else's process
        shutil.rmtree(entry, ignore_errors=True)
        print(f"removed {entry}, left by a prepare that did not finish (process {match.group(2)} is gone)")


def _shuffle_key(line: np.ndarray) -> np.ndarray:
    """A seeded 64-bit hash of each line number (splitmix64): the order of rows within a split."""
    x = line.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15 * (SHUFFLE_SEED + 1) % 2**64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _connect(work: Path, budget: int, threads: int | None):
    import duckdb

    con = duckdb.connect(str(work / "work.duckdb"))
    limit = max(budget - _RESERVE, budget // 2)
    con.execute(f"SET memory_limit='{limit // 2**20}MB'")
    spill = str(work / "spill").replace("'", "''")  # a SQL string literal
    con.execute(f"SET temp_directory='{spill}'")
    con.execute("SET preserve_insertion_order=false")
    if threads:
        con.execute(f"SET threads={int(threads)}")
    return con


def _batches(con, query: str, rows: int = 1 << 18) -> Iterator[pa.Table]:
    for batch in con.sql(query).to_arrow_reader(rows):
        yield pa.Table.from_batches([batch])


def prepare(name: str, src: str | Path, out: str | Path, force: bool = False, sample_users: int = 0,
            rows_per_user: int = 0, memory_budget: str | int = DEFAULT_BUDGET, threads: int | None = None) -> dict:
    """Read dataset `name` from `src` and write the store OUT/{events,train,valid,test}/, vocab/, meta.json, CARD.md
    and, last, `.complete`, through a temporary folder next to OUT that is renamed at the end; return meta.

    `sample_users` > 0 keeps only that many users, drawn at random with SAMPLE_USERS_SEED, with all their rows and
    events; ids, vocabularies and the time split's cut points stay those of the whole dataset, so the output is a
    subset of the full one (and the same configs apply). `rows_per_user` > 0 then keeps at most that many rows of
    each user in each split, drawn at random (histories are unchanged: the event log keeps every event).
    `memory_budget` (bytes or '2GB') bounds the process: DuckDB gets all but a reserve and spills to disk beyond."""
    out = Path(out)
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}, expected one of {', '.join(DATASETS)}")
    if sample_users < 0 or rows_per_user < 0:
        raise ValueError(f"sample_users and rows_per_user must be >= 0, got {sample_users} and {rows_per_user}")
    budget = memory_budget if isinstance(memory_budget, int) else parse_size(memory_budget)
    if budget < 256 << 20:
        raise PrepareError(f"memory budget {memory_budget}: at least 256MB is needed")
    _check_out(out, force)
    source = READERS[name](src)
    _remove_leftovers(out)
    work = out.with_name(f".{out.name}.work-{os.getpid()}")
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrepareError(f"{out}: cannot create a work folder beside it ({err.strerror or err})") from None
    try:
        import duckdb
    except ImportError as err:  # a dependency of the package; a broken install
        raise PrepareError(f"longer-data prepare needs DuckDB ({err}); pip install duckdb") from None
    try:
        con = _connect(work, budget, threads)
        try:
            return _run(con, name, source, out, sample_users, rows_per_user)
        finally:
            con.close()
    except duckdb.Error as err:
        raise PrepareError(f"{out}: the DuckDB engine failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
                           f"memory budget {budget >> 20} MB, spill folder {work / 'spill'}") from None
    except OutputError as err:
        raise PrepareError(str(err)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(con, name: str, source: Source, out: Path, sample_users: int, rows_per_user: int) -> dict:
    skipped = Skipped()
    con.execute("CREATE TABLE ev (user BIGINT, item BIGINT, category BIGINT, action TINYINT, ts BIGINT, label FLOAT, "
                "line BIGINT, shuffle UBIGINT)")
    total = 0
    for block in source.blocks(skipped):
        if block.num_rows:
            block = block.append_column("shuffle", pa.array(_shuffle_key(block["line"].to_numpy())))
            con.register("block", block)
            con.execute("INSERT INTO ev SELECT * FROM block")
            con.unregister("block")
            total += block.num_rows
    source.finish(skipped)
    if not total:
        why = "; ".join(f"{r} {c} (first: {skipped.first[r]})" for r, c in skipped.counts.items()) or "it holds no line"
        raise PrepareError(f"{source.file}: no valid interaction to prepare: {why}")

    # rows that repeat an earlier one in every field but the line: kept (logs do repeat events), counted
    duplicates = con.execute("SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM ev GROUP BY user, item, "
                             "category, action, ts, label HAVING count(*) > 1)").fetchone()[0]
    for table, column in (("user", "user"), ("item", "item"), ("category", "category")):
        con.execute(f"CREATE TABLE vocab_{table} AS SELECT {column} AS raw, (row_number() OVER (ORDER BY {column}) - 1)"
                    f"::BIGINT AS id FROM (SELECT DISTINCT {column} FROM ev)")
    k1, k2 = (int(np.floor(np.float64(q) * (total - 1))) for q in SPLIT_QUANTILES)  # numpy's "lower" quantiles
    valid_from, test_from = con.execute(
        "WITH c AS (SELECT ts, count(*) AS k FROM ev GROUP BY ts), s AS (SELECT ts, sum(k) OVER (ORDER BY ts ROWS "
        f"BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cum FROM c) SELECT min(ts) FILTER (WHERE cum > {k1}), "
        f"min(ts) FILTER (WHERE cum > {k2}) FROM s").fetchone()
    split = f"CASE WHEN ts < {valid_from} THEN 0 WHEN ts < {test_from} THEN 1 ELSE 2 END"
    users = con.execute("SELECT count(*) FROM vocab_user").fetchone()[0]
    sizes = {t: con.execute(f"SELECT count(*) FROM vocab_{t}").fetchone()[0] for t in ("item", "category")}
    meta = {"dataset": name, "source": dict(source.info), "params": {"shuffle_seed": SHUFFLE_SEED},
            "vocab": {"items": sizes["item"], "categories": sizes["category"], "actions": len(source.actions),
                      "users": users},
            "actions": list(source.actions), "rows": {}, "positive_rate": {},
            "time_split": {"valid_from": int(valid_from), "test_from": int(test_from)},
            "duplicate_rows": int(duplicates)}
    where, sampling = "", []
    if sample_users or rows_per_user:
        meta["before_sampling"] = _split_counts(con, f"SELECT {split} AS split, label FROM ev")
    if sample_users:
        chosen = np.random.default_rng(SAMPLE_USERS_SEED).choice(users, min(sample_users, users), replace=False)
        con.register("chosen", pa.table({"id": np.sort(chosen).astype(np.int64)}))
        where = "WHERE vu.id IN (SELECT id FROM chosen)"
        meta["params"]["sample_users"] = {"users": len(chosen), "of": users, "seed": SAMPLE_USERS_SEED}
        sampling.append(f"--sample-users {sample_users}")
        meta["notes"] = [f"users subsampled: {len(chosen)} of {users} drawn at random (seed {SAMPLE_USERS_SEED}) with "
                         "all their rows and events; ids, vocab and time split of the full data"]
    con.execute(
        "CREATE TABLE m AS SELECT vu.id AS user_id, vi.id AS item_id, vc.id AS category_id, action, ts, label, line, "
        f"shuffle, {split} AS split FROM ev JOIN vocab_user vu ON ev.user = vu.raw JOIN vocab_item vi ON "
        f"ev.item = vi.raw JOIN vocab_category vc ON ev.category = vc.raw {where}")
    con.execute("DROP TABLE ev")
    cap = ""
    if rows_per_user:
        # QUALIFY filters after the window functions: `h` still counts every earlier event of the user
        cap = f"QUALIFY row_number() OVER (PARTITION BY user_id, split ORDER BY shuffle, line) <= {rows_per_user}"
        meta["params"]["rows_per_user"] = {"rows": rows_per_user, "seed": SHUFFLE_SEED}
        sampling.append(f"--rows-per-user {rows_per_user}")
        meta["notes"] = [*meta.get("notes", []), f"at most {rows_per_user} rows per user and split, drawn at random "
                         f"(seed {SHUFFLE_SEED}); histories keep every earlier event"]
    con.execute("CREATE TABLE r AS SELECT user_id, item_id, category_id, ts, label, split, shuffle, line, "
                f"(rank() OVER (PARTITION BY user_id ORDER BY ts) - 1)::BIGINT AS h FROM m {cap}")
    after = _split_counts(con, "SELECT split, label FROM r")
    empty = [s for s in SPLITS if not after["rows"][s]]
    if empty:
        raise PrepareError(
            f"{source.file}: split {', '.join(empty)} would get 0 rows (cut points: valid from {valid_from}, test from "
            f"{test_from}, over {total} interactions{'; after sampling' if sampling else ''}): too few distinct "
            "timestamps (e.g. every event in the same second) or too few users; nothing was written")
    hist = con.execute("SELECT h, count(*) FROM r GROUP BY h").fetchnumpy()
    meta["history_length"] = percentiles_of_counts(hist["h"], hist["count_star()"])
    meta["skipped"], meta["skipped_first"] = dict(skipped.counts), dict(skipped.first)
    meta["notes"] = [*source.notes, *meta.get("notes", [])]
    if sampling:
        meta["sampling"] = sampling

    types = {"hist_item_id": id_type(sizes["item"]), "hist_category_id": id_type(sizes["category"]),
             "hist_action": pa.int32()}
    rows_schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("category_id", pa.int64()),
                             ("timestamp", pa.int64()), ("label", pa.float32())])
    with StoreWriter(out, event_schema("user_id", "hist_timestamp", types), rows_schema) as writer:
        for batch in _batches(con, "SELECT user_id, ts AS hist_timestamp, item_id AS hist_item_id, category_id AS "
                              "hist_category_id, action AS hist_action FROM m ORDER BY user_id, ts, item_id, line"):
            writer.events(batch)
        for s, split_name in enumerate(SPLITS):
            for batch in _batches(con, "SELECT user_id, item_id, category_id, ts AS timestamp, label FROM r WHERE "
                                  f"split = {s} ORDER BY shuffle, line"):
                writer.rows(split_name, batch)
        meta["positive_rate"] = after["positive_rate"]

        def vocab_and_card(folder: Path, meta: dict) -> None:
            _write_vocab(con, folder / "vocab", source, meta)
            meta["size_mb"] = round(sum(p.stat().st_size for p in folder.rglob("*.parquet")) / 2**20, 1)
            (folder / "CARD.md").write_text(card(meta))

        return writer.finish(meta, vocab_and_card)


def _split_counts(con, query: str) -> dict:
    """{"rows": {split: n}, "positive_rate": {split: rate}} of a query with columns split, label."""
    found = {int(s): (int(n), float(p or 0.0)) for s, n, p in
             con.execute(f"SELECT split, count(*), avg(label) FROM ({query}) GROUP BY split").fetchall()}
    return {"rows": {name: found.get(s, (0, 0.0))[0] for s, name in enumerate(SPLITS)},
            "positive_rate": {name: round(found.get(s, (0, 0.0))[1], 4) for s, name in enumerate(SPLITS)}}


def _write_vocab(con, folder: Path, source: Source, meta: dict) -> None:
    """vocab/{user,item,category,action}.parquet: `raw` -> `id`."""
    folder.mkdir(parents=True)
    for table in ("user", "item", "category"):
        vocab = con.sql(f"SELECT raw, id FROM vocab_{table} ORDER BY id").to_arrow_table()
        if table == "category" and source.category_names is not None:
            names = np.array(source.category_names, dtype=object)
            vocab = pa.table({"raw": pa.array(names[vocab["raw"].to_numpy()].tolist(), pa.string()), "id": vocab["id"]})
        if table == "item" and source.genre_movies is not None:
            raw = vocab["raw"].to_numpy()
            meta["source"]["items_without_genre"] = int(np.isin(raw, source.genre_movies, invert=True).sum())
        pq.write_table(vocab, folder / f"{table}.parquet")
    pq.write_table(pa.table({"raw": pa.array(source.actions), "id": np.arange(len(source.actions), dtype=np.int64)}),
                   folder / "action.parquet")
