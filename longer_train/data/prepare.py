"""Prepare public datasets in the sample schema: MovieLens (ML-100K, ML-1M, ML-20M / ml-latest) and the
Taobao UserBehavior log.

Each interaction becomes one row whose history is the same user's strictly earlier interactions (oldest
first, newest `max_len` kept). Raw ids are remapped to dense ids whose vocabularies are written beside
the data; rows are split by global time quantiles into train/valid/test. The output has the synthetic
generator's layout (parts, row groups, meta.json, `.complete` written last, temp folder renamed at the
end) plus `vocab/*.parquet` and a dataset card `CARD.md`. See docs/data.md, "Public datasets".
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .writer import SPLITS, is_replaceable, time_split, write_dataset

DATASETS = ("movielens", "taobao")
SHUFFLE_SEED = 0  # rows are shuffled within each split with this fixed seed: the output is deterministic
SAMPLE_USERS_SEED = 0  # `sample_users` draws its users with this fixed seed

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

TERMS = {
    "movielens": "GroupLens terms: research use only, no commercial use, no endorsement, cite Harper & Konstan "
                 "(2015); the data may not be redistributed without permission. Keep this folder private.",
    "taobao": "Tianchi dataset 649: non-commercial research use; cite Zhu et al., KDD 2018. Do not "
              "redistribute this folder.",
}


class PrepareError(ValueError):
    """A source file is missing, ambiguous or unreadable (the message names the file and line)."""


@dataclass(frozen=True)
class TextFile:
    """A text file on disk, gzipped (`.gz`) or not, or a member of a zip archive."""

    path: Path
    member: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    @contextmanager
    def open(self, encoding: str) -> Iterator[TextIO]:
        if self.member is None:
            opener = gzip.open if self.path.suffix == ".gz" else open
            with opener(self.path, "rt", encoding=encoding, newline="") as f:
                yield f
        else:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as raw:
                yield io.TextIOWrapper(raw, encoding=encoding, newline="")

    def sibling(self, name: str) -> TextFile | None:
        """The file `name` (or `name.gz`) in the same folder of the disk or the archive, if there is one."""
        if self.member is None:
            for candidate in (self.path.parent / name, self.path.parent / f"{name}.gz"):
                if candidate.is_file():
                    return TextFile(candidate)
            return None
        folder = self.member.rpartition("/")[0]
        wanted = f"{folder}/{name}" if folder else name
        with zipfile.ZipFile(self.path) as archive:
            return TextFile(self.path, wanted) if wanted in archive.namelist() else None


@dataclass
class Skipped:
    """Lines left out, by reason, with the first example of each (file:line and what was wrong)."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, where: str, count: int = 1) -> None:
        if count:
            self.counts[reason] = self.counts.get(reason, 0) + count
            self.first.setdefault(reason, where)


@dataclass
class Interactions:
    """Parsed interactions with raw ids, in file order, and how they were read."""

    user: np.ndarray  # int64 raw ids
    item: np.ndarray  # int64 raw ids
    category: np.ndarray  # raw category (int64 id or genre name)
    action: np.ndarray  # int64 index into `actions`
    timestamp: np.ndarray  # int64 unix seconds
    label: np.ndarray  # float32 0/1
    actions: tuple[str, ...]
    skipped: Skipped
    source: dict  # files read and their format
    notes: list[str]  # lines for the dataset card


# ----------------------------------------------------------------------------------------------------
# reading delimited text
# ----------------------------------------------------------------------------------------------------
def _parse(text: TextFile, encoding: str, sep: str, converters: list[Callable], skipped: Skipped,
           header: str | None = None) -> list[tuple]:
    """Rows of converted fields; lines with the wrong field count or a bad value are skipped and counted.
    Empty lines are ignored. `header`, if given, must be the first line."""
    rows = []
    with text.open(encoding) as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if number == 1 and header is not None:
                if line.strip() != header:
                    raise PrepareError(f"{text.name}:1: header is {line!r}, expected {header!r}")
                continue
            if not line.strip():
                continue
            row = _convert(line.split(sep), converters, f"{text.name}:{number}", skipped)
            if row is not None:
                rows.append(row)
    if not rows:
        raise PrepareError(f"{text.name}: no valid line (first problem: {skipped.first.get('malformed_lines')})")
    return rows


def _convert(fields: list[str], converters: list[Callable], where: str, skipped: Skipped) -> tuple | None:
    if len(fields) != len(converters):
        skipped.add("malformed_lines", f"{where}: {len(fields)} fields, expected {len(converters)}")
        return None
    values = []
    for column, (conv, value) in enumerate(zip(converters, fields), 1):
        try:
            values.append(conv(value))
        except ValueError as err:
            skipped.add("malformed_lines", f"{where}, column {column}: {err}")
            return None
    return tuple(values)


def _columns(rows: list[tuple], dtypes: list) -> list[np.ndarray]:
    return [np.array(col, dtype=dtype) for col, dtype in zip(zip(*rows), dtypes)]


# ----------------------------------------------------------------------------------------------------
# MovieLens
# ----------------------------------------------------------------------------------------------------
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


def _rating(value: str) -> float:
    rating = float(value)
    if not 0.5 <= rating <= 5.0:
        raise ValueError(f"rating {value} is outside 0.5..5")
    return rating


def _find_in_zip(archive: Path, names: tuple[str, ...]) -> TextFile | None:
    with zipfile.ZipFile(archive) as z:
        for name in names:
            for member in sorted(z.namelist()):
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
    """Raw movie id -> its first genre, from movies.dat, u.item or movies.csv."""
    encoding = "utf-8" if text.name.endswith(".csv") else "latin-1"
    genres = {}
    with text.open(encoding) as f:
        lines = csv.reader(f) if text.name.endswith(".csv") else (line.rstrip("\r\n") for line in f)
        for number, line in enumerate(lines, 1):
            try:
                movie, genre = _genre_of(line)
            except (ValueError, IndexError) as err:
                raise PrepareError(f"{text.name}:{number}: cannot read the movie id and genres ({err})") from None
            if movie is not None:
                genres[movie] = genre
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


def read_movielens(src: str | Path) -> Interactions:
    """Ratings (label = rating >= 4, action = rating bucket) with the movie's first genre as category."""
    ratings = find_source(src, tuple(_ML_FORMATS))
    fmt = _ML_FORMATS[Path(ratings.member or ratings.path).name.removesuffix(".gz")]
    skipped = Skipped()
    rows = _parse(ratings, "latin-1", fmt.sep, [int, int, _rating, int], skipped, fmt.header)
    user, item, rating, timestamp = _columns(rows, [np.int64, np.int64, np.float64, np.int64])
    genre_text = ratings.sibling(fmt.genre_file)
    genres = _genres(genre_text) if genre_text else {}
    movies = np.unique(item)
    category = np.array([genres.get(m, UNKNOWN_GENRE) for m in movies.tolist()])[np.searchsorted(movies, item)]
    items_without_genre = sum(m not in genres for m in movies.tolist())
    if genre_text:
        genre_note = (f"category = the movie's first genre in {genre_text.name}; "
                      f"{items_without_genre} rated movies are not in it and have category '{UNKNOWN_GENRE}'")
    else:
        genre_note = (f"no {fmt.genre_file} beside the ratings: every movie has category '{UNKNOWN_GENRE}' "
                      "(the category feature carries no information)")
    return Interactions(
        user=user, item=item, category=category,
        action=(np.maximum(np.floor(rating), 1) - 1).astype(np.int64), timestamp=timestamp,
        label=(rating >= ML_POSITIVE_RATING).astype(np.float32), actions=ML_ACTIONS, skipped=skipped,
        source={"format": fmt.release, "ratings": ratings.name, "genres": genre_text.name if genre_text else None,
                "items_without_genre": items_without_genre},
        notes=[f"label = 1 if rating >= {ML_POSITIVE_RATING:g} else 0",
               "hist_action = floor(rating) - 1 (ratings 1..5 -> 0..4; half stars round down, 0.5 -> 0)",
               genre_note],
    )


# ----------------------------------------------------------------------------------------------------
# Taobao UserBehavior
# ----------------------------------------------------------------------------------------------------
def _behavior(value: str) -> int:
    if value not in TAOBAO_ACTIONS:
        raise ValueError(f"unknown behavior {value!r}, expected one of {', '.join(TAOBAO_ACTIONS)}")
    return TAOBAO_ACTIONS.index(value)


def read_taobao(src: str | Path) -> Interactions:
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
    skipped = Skipped()
    rows = _parse(text, "latin-1", ",", [int, int, int, _behavior, int], skipped)
    user, item, category, action, timestamp = _columns(rows, [np.int64] * 5)
    inside = (timestamp >= TAOBAO_WINDOW[0]) & (timestamp < TAOBAO_WINDOW[1])
    if not inside.all():
        outside = timestamp[~inside]
        skipped.add("out_of_window", f"{text.name}: timestamps {int(outside.min())}..{int(outside.max())} "
                    f"outside [{TAOBAO_WINDOW[0]}, {TAOBAO_WINDOW[1]})", int((~inside).sum()))
    action = action[inside]
    return Interactions(
        user=user[inside], item=item[inside], category=category[inside], action=action,
        timestamp=timestamp[inside], label=np.isin(action, [TAOBAO_ACTIONS.index(b) for b in TAOBAO_POSITIVE])
        .astype(np.float32), actions=TAOBAO_ACTIONS, skipped=skipped,
        source={"format": "Taobao UserBehavior", "behaviors": text.name},
        notes=[f"label = 1 if behavior in {{{', '.join(TAOBAO_POSITIVE)}}} else 0 (pv)",
               "hist_action = behavior: " + ", ".join(f"{b} {i}" for i, b in enumerate(TAOBAO_ACTIONS)),
               f"rows with timestamps outside [{TAOBAO_WINDOW[0]}, {TAOBAO_WINDOW[1]}) (2017-11-25 .. 2017-12-03, "
               "Beijing time) are dropped",
               "a user cut off at the end of the file keeps the rows that are there (the file is in time "
               "order within a user, so only their later events are missing)"],
    )


READERS: dict[str, Callable[[str | Path], Interactions]] = {"movielens": read_movielens, "taobao": read_taobao}


# ----------------------------------------------------------------------------------------------------
# samples, split, metadata
# ----------------------------------------------------------------------------------------------------
@dataclass
class _Samples:
    """One row per interaction in (user, timestamp, item, file order) order; row r's history is the
    events [start[r], end[r]) of the same arrays."""

    columns: dict[str, np.ndarray]
    history: dict[str, np.ndarray]
    start: np.ndarray
    end: np.ndarray
    user_start: np.ndarray
    vocab: dict[str, np.ndarray]  # table -> raw value of each dense id


def _samples(data: Interactions, max_len: int) -> _Samples:
    vocab, dense = {}, {}
    for table, raw in (("user", data.user), ("item", data.item), ("category", data.category)):
        vocab[table], dense[table] = np.unique(raw, return_inverse=True)  # id = rank of the raw value
    vocab["action"] = np.array(data.actions)
    order = np.lexsort((dense["item"], data.timestamp, dense["user"]))  # stable: ties keep file order
    user, time = dense["user"][order], data.timestamp[order]
    item, category, action = dense["item"][order], dense["category"][order], data.action[order]
    index = np.arange(len(order))
    new_user = np.r_[True, user[1:] != user[:-1]]
    new_time = new_user | np.r_[True, time[1:] != time[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, index, 0))
    end = np.maximum.accumulate(np.where(new_time, index, 0))  # first event of this user at this time
    return _Samples(
        columns={"user_id": user, "item_id": item, "category_id": category, "timestamp": time,
                 "label": data.label[order]},
        history={"hist_item_id": item, "hist_category_id": category, "hist_action": action,
                 "hist_timestamp": time},
        start=np.maximum(user_start, end - max_len), end=end, user_start=user_start, vocab=vocab,
    )


def _percentiles(length: np.ndarray) -> dict:
    p50, p90, p99 = (int(np.percentile(length, q)) for q in (50, 90, 99))
    return {"p50": p50, "p90": p90, "p99": p99, "max": int(length.max()), "mean": round(float(length.mean()), 1),
            "empty": int((length == 0).sum())}


def _meta(name: str, data: Interactions, s: _Samples, max_len: int) -> dict:
    return {
        "dataset": name, "source": data.source, "params": {"max_len": max_len, "shuffle_seed": SHUFFLE_SEED},
        "vocab": {"items": len(s.vocab["item"]), "categories": len(s.vocab["category"]),
                  "actions": len(s.vocab["action"]), "users": len(s.vocab["user"])},
        "actions": list(data.actions), "rows": {}, "positive_rate": {},
        "history_length": _percentiles(s.end - s.start),
        "full_history_length": _percentiles(s.end - s.user_start),
        "skipped": dict(data.skipped.counts), "skipped_first": dict(data.skipped.first),
        "notes": data.notes,
    }


def _write_vocab(folder: Path, vocab: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True)
    for table, raw in vocab.items():
        pq.write_table(pa.table({"raw": raw, "id": np.arange(len(raw), dtype=np.int64)}), folder / f"{table}.parquet")


def card(meta: dict) -> str:
    """The human-readable dataset card (CARD.md) for a prepared dataset's meta.json."""
    lines = [f"# {meta['dataset']}: {meta['source']['format']}", "",
             "Prepared by `longer-data prepare` (docs/data.md, \"Public datasets\").", "",
             "Source: " + ", ".join(f"{k} `{v}`" for k, v in meta["source"].items() if k != "format"), "",
             f"Terms: {TERMS[meta['dataset']]}", "", "## Definitions", ""]
    lines += [f"- {note}" for note in meta["notes"]]
    lines += ["- one row per interaction; history = the same user's events with a strictly smaller timestamp, "
              "oldest first, in (timestamp, item id, file order) order, newest "
              f"{meta['params']['max_len']} kept",
              "- ids are dense 0..n-1 in the order of the raw values; vocab/<table>.parquet maps `raw` -> `id`",
              f"- split by time: train < {meta['time_split']['valid_from']} <= valid < "
              f"{meta['time_split']['test_from']} <= test (unix seconds); rows shuffled within a split",
              "", "## Numbers", "", "| split | rows | positive rate |", "|---|---|---|"]
    lines += [f"| {s} | {meta['rows'][s]} | {meta['positive_rate'][s]:.4f} |" for s in SPLITS]
    lines += ["", "| history length | " + " | ".join(meta["history_length"]) + " |",
              "|---" * (len(meta["history_length"]) + 1) + "|"]
    for key in ("history_length", "full_history_length"):
        lines.append(f"| {'stored' if key == 'history_length' else 'before the max_len cut'} | "
                     + " | ".join(str(v) for v in meta[key].values()) + " |")
    lines += ["", "Vocabulary sizes (= `num_embeddings`): "
              + ", ".join(f"{k} {v}" for k, v in meta["vocab"].items()), "",
              f"Size on disk: {meta['size_mb']} MB of Parquet.", "", "## Skipped input", ""]
    lines += [f"- {reason}: {count} (first: {meta['skipped_first'][reason]})"
              for reason, count in meta["skipped"].items()] or ["- none"]
    return "\n".join(lines) + "\n"


def _cap_rows_per_user(user: np.ndarray, split_of: np.ndarray, cap: int) -> np.ndarray:
    """split_of with all but `cap` random rows of each (user, split) set to -1 (not written)."""
    shuffled = np.random.default_rng(SAMPLE_USERS_SEED).permutation(len(user))
    grouped = shuffled[np.lexsort((user[shuffled], split_of[shuffled]))]  # by split, user; random within
    g_user, g_split = user[grouped], split_of[grouped]
    first = np.r_[True, (g_user[1:] != g_user[:-1]) | (g_split[1:] != g_split[:-1])]
    index = np.arange(len(grouped))
    rank = index - np.maximum.accumulate(np.where(first, index, 0))  # position within its (split, user) group
    capped = split_of.copy()
    capped[grouped[rank >= cap]] = -1
    return capped


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
        if not (out.is_dir() and is_replaceable(out)):
            raise FileExistsError(f"{out} is not a dataset written by longer-data; refusing to replace it "
                                  "even with --force")


def prepare(name: str, src: str | Path, out: str | Path, max_len: int = 2000, force: bool = False,
            sample_users: int = 0, rows_per_user: int = 0) -> dict:
    """Read dataset `name` from `src` and write OUT/{train,valid,test}/, vocab/, meta.json, CARD.md and, last,
    `.complete`, through a temporary folder next to OUT that is renamed at the end; return meta.

    `sample_users` > 0 keeps only that many users, drawn at random with SAMPLE_USERS_SEED, with all their rows;
    ids, vocabularies and the time split's cut points stay those of the whole dataset, so the output is a
    subset of the full one (and the same configs apply). `rows_per_user` > 0 then keeps at most that many
    rows of each user in each split, drawn at random with the same seed (histories are unchanged: a kept row
    still sees every earlier event)."""
    out = Path(out)
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}, expected one of {', '.join(DATASETS)}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if sample_users < 0 or rows_per_user < 0:
        raise ValueError(f"sample_users and rows_per_user must be >= 0, got {sample_users} and {rows_per_user}")
    _check_out(out, force)
    data = READERS[name](src)
    s = _samples(data, max_len)
    split_of, valid_from, test_from = time_split(s.columns["timestamp"])
    meta = _meta(name, data, s, max_len)
    meta["time_split"] = {"valid_from": valid_from, "test_from": test_from}
    if sample_users:
        users = np.arange(len(s.vocab["user"]))
        chosen = np.random.default_rng(SAMPLE_USERS_SEED).choice(users, min(sample_users, len(users)), replace=False)
        kept = np.isin(s.columns["user_id"], chosen)
        split_of = np.where(kept, split_of, -1)  # write_dataset writes the rows of splits 0, 1, 2 only
        meta["params"]["sample_users"] = {"users": len(chosen), "of": len(users), "seed": SAMPLE_USERS_SEED}
        meta["notes"] = [*meta["notes"], f"users subsampled: {len(chosen)} of {len(users)} drawn at random (seed "
                         f"{SAMPLE_USERS_SEED}) with all their rows; ids, vocab and time split of the full data"]
    if rows_per_user:
        split_of = _cap_rows_per_user(s.columns["user_id"], split_of, rows_per_user)
        meta["params"]["rows_per_user"] = {"rows": rows_per_user, "seed": SAMPLE_USERS_SEED}
        meta["notes"] = [*meta["notes"], f"at most {rows_per_user} rows per user and split, drawn at random (seed "
                         f"{SAMPLE_USERS_SEED}); histories keep every earlier event"]
    if sample_users or rows_per_user:
        kept = split_of >= 0
        meta["history_length"] = _percentiles((s.end - s.start)[kept])
        meta["full_history_length"] = _percentiles((s.end - s.user_start)[kept])

    def vocab_and_card(folder: Path, meta: dict) -> None:
        _write_vocab(folder / "vocab", s.vocab)
        meta["size_mb"] = round(sum(p.stat().st_size for p in folder.rglob("*.parquet")) / 2**20, 1)
        (folder / "CARD.md").write_text(card(meta))

    rng = np.random.default_rng(SHUFFLE_SEED)
    return write_dataset(out, meta, s.columns, s.history, s.start, s.end, split_of, rng, extra=vocab_and_card)
