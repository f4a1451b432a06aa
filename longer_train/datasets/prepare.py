"""Prepare public datasets as a sequence store (data/store.py): MovieLens (ML-100K, ML-1M, ML-20M / ml-latest) and the
Taobao UserBehavior log.

Each interaction is one sample row (user, item, category, time, label); each user's events are stored once in the
event log, sorted by (user, time, item id, file order); the loader rebuilds a row's history as the user's events
strictly before it. Raw ids are remapped to dense ids whose vocabularies are written beside the data; rows are split
by global time quantiles into train/valid/test. See docs/data.md, "Public datasets".

Streaming, in bounded memory (`memory_budget`), whatever the input size:
1. read (sources.py, over text.py): the text (plain, .gz or a zip member) is read in blocks of lines and parsed with
   pyarrow compute, every line counted: malformed lines (field count, integer syntax, ids beyond int64, ratings,
   behaviors) are skipped and counted with the first example (file:line, column); valid rows go to a DuckDB table
   on disk;
2. DuckDB (memory_limit = most of the budget, temp files next to OUT, so its sorts and joins spill to disk instead
   of failing) computes the vocabularies, the time split's cut points, the user sample and the row caps;
3. the event log (in order) and each split's rows (in a seeded shuffle order) stream back as Arrow batches into
   `writer.StoreWriter`, and the dataset card (card.py) beside them.
Engine choice (measured, benchmarks/results/prepare_cpu.md): pyarrow, DuckDB and Polars all parse the CSV at about
the same speed; DuckDB sorts out of core under a configurable memory limit, which the row order needs.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .card import card, percentiles_of_counts
from .sources import READERS, Source
from .text import PrepareError, Skipped, parse_size
from .writer import SPLIT_QUANTILES, SPLITS, OutputError, StoreWriter, event_schema, id_type, is_replaceable

DATASETS = ("movielens", "taobao")
SHUFFLE_SEED = 0  # rows are shuffled within each split by a hash of (line, this seed): the output is deterministic
SAMPLE_USERS_SEED = 0  # `sample_users` draws its users with this fixed seed
DEFAULT_BUDGET = "2GB"
_RESERVE = 400 << 20  # of the budget, left to Python, pyarrow blocks and the writers; DuckDB gets the rest


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
