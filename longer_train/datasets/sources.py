"""The public datasets' sources: MovieLens (ML-100K, ML-1M, ML-20M / ml-latest) and the Taobao UserBehavior log,
each found in the downloaded file, archive or folder and read (`text.py`) into Arrow blocks of valid interactions
with raw ids (`RAW`), with its definitions (label, actions, categories) and notes for the dataset card."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .text import (
    UNREADABLE,
    Block,
    PrepareError,
    Skipped,
    TextFile,
    describe_error,
    parse_floats,
    parse_ints,
    parse_timestamps,
    read_blocks,
    zip_names,
)

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


def _interactions(block: Block, **columns: np.ndarray) -> pa.Table:
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
    members = zip_names(archive)
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
    except (csv.Error, *UNREADABLE[:-1]) as err:
        raise PrepareError(f"{text.name}: cannot read past line {number[0]} ({describe_error(err)})") from None
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
        types = [pa.int64(), pa.int64(), pa.float64(), pa.int64()]
        for block in read_blocks(ratings, fmt.sep, types, skipped, fmt.header):
            user, item = parse_ints(block, 0, skipped), parse_ints(block, 1, skipped)
            rating = parse_floats(block, 2, skipped, 0.5, 5.0, "rating")
            ts = parse_timestamps(block, 3, skipped)
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
        for block in read_blocks(text, ",", [pa.int64()] * 3 + [pa.string(), pa.int64()], skipped):
            user, item, category = (parse_ints(block, k, skipped) for k in range(3))
            behavior = block.fields[3] if block.typed is None else block.typed[3]
            action = pc.index_in(behavior, value_set=pa.array(TAOBAO_ACTIONS))
            block.reject(action.is_null().to_numpy(zero_copy_only=False), 3, lambda v: (
                f"unknown behavior {v!r}, expected one of {', '.join(TAOBAO_ACTIONS)}"), skipped)
            action = action.fill_null(0).to_numpy().astype(np.int8)
            ts = parse_timestamps(block, 4, skipped)
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
