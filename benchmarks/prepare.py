"""`longer-data prepare taobao` at scale: generate a UserBehavior-format file of N lines with realistic per-user
counts, prepare it in a child process, and print wall time, peak RSS (the child's getrusage high-water mark)
and the output's size on disk, with the command that made each row.

The generated file follows the real UserBehavior.csv (Alibaba/Tianchi 649, ~100M lines, ~988k users, 4.16M
items, 9,439 categories, 2017-11-25..12-03): `user,item,category,behavior,timestamp`, no header, users
contiguous and ordered by id as a string, each user's events in time order. Events per user are lognormal
with the median (78) and p90 (226) of the head of the real file (`../shared/data/taobao-userbehavior-head`),
capped at 5,000; items and categories are Zipf-popular (an item keeps one category) and a user re-visits one
of their own earlier items 30% of the time; behaviors pv/cart/fav/buy 89.8/5.3/2.8/2.1%; 0.04% of the lines
carry a timestamp before the 9-day window (the real head has 35 in 84k), which preparation drops and counts.

    python benchmarks/prepare.py --lines 5000000 [--keep-input] [--memory-budget 1GB] [--work DIR]
        [--out benchmarks/results/prepare_cpu.md]
    python benchmarks/prepare.py --lines 5000000 --readers   # time each candidate CSV engine reading the file
        [--out benchmarks/results/prepare_readers_cpu.md]

The generated input and the prepared output are written under --work (default data/bench-prepare) and
deleted at the end unless --keep-input / --keep-output; results are appended to --out (one table row per run;
the engines' timings as a table of their own). The CSV engines DuckDB and Polars are timed only if installed
(`pip install polars`; DuckDB is a dependency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (1511539200, 1512316800)  # datasets/sources.py TAOBAO_WINDOW: [2017-11-25, 2017-12-04) Beijing time
ITEMS, CATEGORIES = 4_162_024, 9_439
MEDIAN_EVENTS, P90_EVENTS, MAX_EVENTS = 78, 226, 5_000
BEHAVIORS, BEHAVIOR_P = ("pv", "cart", "fav", "buy"), (0.898, 0.053, 0.028, 0.021)
P_REVISIT, P_OUT_OF_WINDOW = 0.3, 0.0004
USERS_PER_CHUNK = 20_000


def _zipf_cdf(n: int, exponent: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(cdf over popularity ranks, id of each rank): Zipf popularity over ids in random order."""
    weight = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return np.cumsum(weight) / weight.sum(), rng.permutation(n).astype(np.int64) + 1


def generate(path: Path, lines: int, seed: int = 0) -> dict:
    """Write a UserBehavior-format CSV of exactly `lines` lines; return its user/event counts."""
    rng = np.random.default_rng(seed)
    sigma = np.log(P90_EVENTS / MEDIAN_EVENTS) / 1.2816  # lognormal through the median and p90
    counts = []
    total = 0
    while total < lines:  # events per user until the lines are reached; the last user takes the rest
        c = np.clip(np.rint(rng.lognormal(np.log(MEDIAN_EVENTS), sigma, 100_000)), 1, MAX_EVENTS).astype(np.int64)
        c = c[: int(np.searchsorted(np.cumsum(c), lines - total)) + 1]
        counts.append(c)
        total += int(c.sum())
    counts = np.concatenate(counts)
    counts[-1] -= total - lines
    users = np.sort(rng.choice(np.arange(1, 1_018_012 + 10 * len(counts)), len(counts), replace=False).astype(str))
    item_cdf, item_of_rank = _zipf_cdf(ITEMS, 0.9, rng)
    cat_cdf, cat_of_rank = _zipf_cdf(CATEGORIES, 1.1, rng)
    category_of_item = cat_of_rank[np.minimum(np.searchsorted(cat_cdf, rng.random(ITEMS + 1)), CATEGORIES - 1)]
    behavior_cdf = np.cumsum(BEHAVIOR_P)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with pacsv.CSVWriter(path, pa.schema([("u", pa.string()), ("i", pa.int64()), ("c", pa.int64()),
                                          ("b", pa.string()), ("t", pa.int64())]), write_options=options) as out:
        for lo in range(0, len(counts), USERS_PER_CHUNK):
            n = counts[lo: lo + USERS_PER_CHUNK]
            m = int(n.sum())
            user = np.repeat(np.arange(len(n)), n)
            first = np.repeat(np.cumsum(n) - n, n)  # each event's user's first event
            item = item_of_rank[np.minimum(np.searchsorted(item_cdf, rng.random(m)), ITEMS - 1)]
            # a revisit copies an earlier event's item of the same user (chains of revisits stay in the user)
            revisit = (rng.random(m) < P_REVISIT) & (np.arange(m) > first)
            source = first + (rng.random(m) * (np.arange(m) - first)).astype(np.int64)
            idx = np.where(revisit, source, np.arange(m))
            for _ in range(8):  # follow chains: the source may itself be a revisit
                idx = idx[idx]
            item = item[idx]
            ts = rng.integers(WINDOW[0], WINDOW[1], m)
            early = rng.random(m) < P_OUT_OF_WINDOW
            ts[early] -= rng.integers(86400, 80 * 86400, int(early.sum()))
            ts = ts[np.lexsort((ts, user))]  # time order within each user
            behavior = np.array(BEHAVIORS)[np.searchsorted(behavior_cdf, rng.random(m) * behavior_cdf[-1])]
            out.write_table(pa.table({"u": users[lo: lo + USERS_PER_CHUNK][user], "i": item,
                                      "c": category_of_item[item], "b": behavior, "t": ts}))
    return {"lines": lines, "users": len(counts), "events_per_user_p50": int(np.median(counts)),
            "events_per_user_p90": int(np.percentile(counts, 90)), "events_per_user_max": int(counts.max())}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _child_peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def run_prepare(src: Path, out: Path, budget: str, extra: list[str]) -> tuple[list[str], float, float, str]:
    """(command, wall s, peak RSS GiB, stdout) of `longer-data prepare taobao` in a child process."""
    command = [str(Path(sys.executable).parent / "longer-data"), "prepare", "taobao", "--src", str(src),
               "--out", str(out), "--force", "--memory-budget", budget, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return command, wall, _child_peak_rss_gib(), done.stdout


def time_readers(src: Path) -> list[str]:
    """Seconds to read the whole CSV into typed columns with each engine, one after the other."""
    rows = []

    def pyarrow_csv():
        opts = pacsv.ReadOptions(column_names=list("uicbt"), block_size=1 << 24)
        n = 0
        for batch in pacsv.open_csv(src, read_options=opts):
            n += batch.num_rows
        return n

    def duckdb_csv():
        import duckdb

        con = duckdb.connect()
        con.execute("SET threads=2")
        return con.execute(f"SELECT count(*), sum(t) FROM read_csv('{src}', header=false, "
                           "columns={'u':'BIGINT','i':'BIGINT','c':'BIGINT','b':'VARCHAR','t':'BIGINT'})").fetchone()[0]

    def polars_csv():
        import polars as pl

        frame = pl.scan_csv(src, has_header=False, new_columns=list("uicbt"))
        return frame.select(pl.len(), pl.col("t").sum()).collect(engine="streaming").item(0, 0)

    for name, read in (("pyarrow.csv.open_csv (streaming)", pyarrow_csv), ("DuckDB read_csv", duckdb_csv),
                       ("Polars scan_csv (streaming)", polars_csv)):
        try:
            start = time.perf_counter()
            n = read()
            rows.append(f"| {name} | {n:,} | {time.perf_counter() - start:.1f} |")
        except ImportError as err:
            rows.append(f"| {name} | not installed ({err.name}) | |")
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-budget", default="1GB", help="passed to longer-data prepare --memory-budget")
    parser.add_argument("--work", default="data/bench-prepare", help="folder for the generated input and output")
    parser.add_argument("--keep-input", action="store_true")
    parser.add_argument("--keep-output", action="store_true")
    parser.add_argument("--readers", action="store_true", help="time the CSV engines instead of preparing")
    parser.add_argument("--out", help="results file (default: benchmarks/results/prepare_cpu.md, or "
                        "prepare_readers_cpu.md with --readers)")
    args = parser.parse_args(argv)
    argv_shown = sys.argv[1:] if argv is None else argv
    results = Path(args.out or f"benchmarks/results/prepare{'_readers' if args.readers else ''}_cpu.md")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"UserBehavior-{args.lines}.csv"
    if not src.exists():
        start = time.perf_counter()
        info = generate(src, args.lines, args.seed)
        print(f"generated {src} ({_size(src) / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s: {info}", flush=True)
    load = os.getloadavg()
    try:
        if args.readers:
            rows = ["| engine | rows | s |", "|---|---:|---:|", *time_readers(src)]
            section = [f"# CSV engines reading {args.lines:,} UserBehavior lines ({_size(src) / 1e9:.2f} GB) into "
                       "typed columns (CPU)", "", f"command: `python benchmarks/prepare.py {shlex.join(argv_shown)}`",
                       "", f"{os.cpu_count()} cores shared with other jobs, 1-minute load average {load[0]:.1f} at the "
                       "start; the engines run one after the other.", "", *rows]
            results.parent.mkdir(parents=True, exist_ok=True)
            results.write_text("\n".join(section) + "\n")
            print("\n".join(section))
            return
        out = work / f"prepared-{args.lines}"
        command, wall, peak, printed = run_prepare(src, out, args.memory_budget, [])
        meta = json.loads((out / "meta.json").read_text())
        print(printed)
        size, events = _size(out) / 1e9, _size(out / "events") / 1e9
        row = (f"| {args.lines:,} | {_size(src) / 1e9:.2f} | {args.memory_budget} | {wall:.0f} | {peak:.2f} | "
               f"{size:.3f} ({events:.3f} + {size - events:.3f}) | "
               f"{sum(meta['rows'].values()):,} | {meta['vocab']['users']:,} | {load[0]:.1f} | "
               f"`python benchmarks/prepare.py {shlex.join(argv_shown)}` |")
        section = [row]
        print(f"prepare: {shlex.join(command)}")
        if not args.keep_output:
            shutil.rmtree(out)
    finally:
        if not args.keep_input:
            src.unlink()
    print("\n".join(section))
    path = results
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# `longer-data prepare taobao` at scale (CPU)\n\n"
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs (load: the "
            "1-minute load average when the run started). Input: a generated UserBehavior-format file "
            "(benchmarks/prepare.py). Peak RSS: getrusage high-water mark of the `longer-data` process.\n\n"
            "| input lines | input GB | memory budget | wall s | peak RSS GiB | output GB (events + the rest) | rows | "
            "users | load | command |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n")
    with path.open("a") as f:
        f.write("\n".join(section) + "\n")


if __name__ == "__main__":
    main()
