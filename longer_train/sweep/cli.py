"""`longer-sweep SPEC.yaml [key=value ...] [--jobs N]`: run every (row, seed) of a sweep spec (`spec.py`) as its own
`longer-train` process, skip the runs already in the sweep's results file (so an interrupted sweep continues
where it stopped), and write the summary (mean ± std per row, paired differences against the reference row,
FLOPs, params, samples/s) and, for scaling sweeps, the power-law fits and figures.

    longer-sweep configs/sweeps/table2_rules.yaml --jobs 2
    longer-sweep configs/sweeps/table2_rules.yaml train.max_steps=5 --seeds 1   # a smoke run
    longer-sweep configs/sweeps/table2_rules.yaml --rerun-stale   # also re-run the lines other code made
    make reproduce [SWEEP=table2_rules] [JOBS=2]   # the committed tables: benchmarks/results/sweeps/, docs/figures/

Files: <results>/<sweep>.jsonl (one line per finished run, appended as runs finish), <results>/<sweep>.md (the
summary), <runs>/<sweep>/<run>/train.log (each run's output), figures in <figures>; by default all under
runs/sweeps/ (not tracked by git), so a sweep of your own leaves nothing in the repository. `make reproduce`
writes the repository's tables (--results benchmarks/results/sweeps --figures docs/figures): commit them as they grow.
With --jobs N, runs go N at a time with cores // N torch threads each (see docs/paper.md for the thread
count the committed sweeps ran with). Ctrl-C stops the running runs; run the same command again to continue.
W&B: every run of a sweep is in the group named after the sweep (`logging.wandb_group`).
Every line records the commit that made it; the runner lists the finished lines made by other code (another
commit's code, uncommitted changes, or no commit recorded: provenance.py) and keeps them unless --rerun-stale.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from ..errors import HelpFormatter
from .runs import BIN, PEERS, ensure_prepared, env_prefix, machine, model_stats, thread_env
from .scaling import scaling_report
from .spec import Run, SpecError, SweepSpec, load_spec
from .summary import (
    MIN_SEEDS,
    append_result,
    finished,
    provenance_note,
    read_results,
    stale_runs,
    summarise,
    summary_table,
)


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def split_threads(jobs: int, threads: int | None, cores: int) -> int:
    """Torch threads per run so that jobs x threads <= cores (at least one)."""
    if jobs < 1:
        raise ValueError("--jobs must be >= 1")
    most = max(1, cores // jobs)
    if threads is None:
        return most
    if threads < 1:
        raise ValueError("--threads must be >= 1")
    if threads > most:
        print(f"longer-sweep: --threads {threads} x --jobs {jobs} > {cores} cores; using {most} thread(s) per run",
              file=sys.stderr)
    return min(threads, most)


def train_command(spec: SweepSpec, run: Run, runs_dir: Path, wandb: str | None) -> list[str]:
    program = [sys.executable, PEERS[run.peer]] if run.peer else [str(BIN / "longer-train")]
    return [
        *program, *map(str, run.configs), *run.overrides, f"train.run_name={run.name}",
        f"train.output_dir={runs_dir}", f"train.runs_table={runs_dir / run.name / 'result.jsonl'}",
        f"logging.wandb_group={spec.name}", *([f"logging.wandb_mode={wandb}"] if wandb else []),
    ]


class Executor:
    """Runs the pending runs `jobs` at a time; only this process appends to the results file."""

    def __init__(self, spec: SweepSpec, results: Path, runs_dir: Path, threads: int, wandb: str | None) -> None:
        self.spec, self.results, self.runs_dir, self.threads, self.wandb = spec, results, runs_dir, threads, wandb
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.live: set[subprocess.Popen] = set()
        self.stats: dict[str, dict[str, float]] = {}  # per row
        self.done = 0

    def run_all(self, pending: list[Run], jobs: int) -> tuple[int, bool]:
        """(failed runs, interrupted)."""
        for run in pending:  # before anything starts: a model that cannot be built fails the sweep now
            if run.row not in self.stats:  # a peer's line brings its own parameter count
                self.stats[run.row] = {} if run.peer else model_stats(run.cfg)
        failed = 0
        pool = ThreadPoolExecutor(max_workers=jobs)
        try:
            futures = [pool.submit(self.one, run, len(pending)) for run in pending]
            for future in as_completed(futures):
                failed += future.result() is False
        except KeyboardInterrupt:
            self.stop.set()
            with self.lock:
                for proc in self.live:
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            return failed, True
        finally:
            pool.shutdown(wait=True)
        return failed, False

    def one(self, run: Run, total: int) -> bool | None:
        run_dir = self.runs_dir / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        table = run_dir / "result.jsonl"
        table.unlink(missing_ok=True)
        command = train_command(self.spec, run, self.runs_dir, self.wandb)
        start = time.perf_counter()
        with (run_dir / "train.log").open("w") as log:
            log.write("$ " + env_prefix(self.spec.env) + shlex.join(command) + "\n")
            log.flush()
            with self.lock:
                if self.stop.is_set():
                    return None
                proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=thread_env(self.threads, self.spec.env),
                                        start_new_session=True)  # Ctrl-C reaches the runner, which stops them
                self.live.add(proc)
            code = proc.wait()
            with self.lock:
                self.live.discard(proc)
        if self.stop.is_set():
            return None
        if code != 0 or not table.exists():
            tail = (run_dir / "train.log").read_text().splitlines()[-15:]
            print(f"FAILED {run.name} (exit {code}); {run_dir / 'train.log'}:\n  " + "\n  ".join(tail), flush=True)
            return False
        summary = read_results(table)[-1]
        line: dict[str, Any] = {
            **summary, "sweep": self.spec.name, "run": run.name, "row": run.row, "seed": run.seed,
            "config_hash": run.config_hash, "values": run.values, "overrides": run.overrides,
            **self.stats[run.row], "threads": self.threads, "wall_s": round(time.perf_counter() - start, 1),
        }
        with self.lock:
            append_result(self.results, line)
            self.done += 1
            print(f"[{self.done}/{total}] {self.spec.name}/{run.name}: test auc {line['test_auc']:.4f} "
                  f"logloss {line['test_logloss']:.4f} in {line['wall_s']:.0f} s", flush=True)
        return True


def _extensions(spec: SweepSpec) -> dict[str, list]:
    """Extension text -> the rows that declare it."""
    found: dict[str, list] = {}
    for row in spec.rows:
        if row.extension:
            found.setdefault(row.extension, []).append(row)
    return found


def threads_used(lines: Iterable[dict], fallback: int) -> str:
    """The torch threads the finished runs recorded ("1", "1 or 2"); `fallback` where none recorded any. A report
    rewritten by another invocation (--report-only, other --jobs) describes the runs, not itself."""
    used = sorted({line["threads"] for line in lines if "threads" in line})
    return " or ".join(map(str, used)) if used else str(fallback)


def write_summary(spec: SweepSpec, runs: list[Run], results: Path, figures: Path, command: str, extra: list[str],
                  threads: int) -> Path:
    lines = read_results(results)
    done = finished(lines, {r.name: r.config_hash for r in runs})
    rows = []
    for row in spec.rows:
        shown = ((f"experiment={row.experiment.as_posix()}",) if row.experiment else ()) + row.overrides
        shown += tuple(f"data {key}={value}" for key, value in (row.data or {}).items())
        rows.append((row.name, shown, next(r.values for r in runs if r.row == row.name)))
    summaries = summarise(rows, list(done.values()), spec.reference)
    out = results.with_suffix(".md")
    roots = list(dict.fromkeys(r.cfg.data.root for r in runs))
    text = [
        f"# Sweep `{spec.name}`", "", spec.description, "",
        f"Command: `{command}` ({len(done)} of {len(runs)} runs finished; the same command runs the others "
        f"and rewrites this file). Spec: `{spec.path.as_posix()}`.", "",
        f"Each run: `{env_prefix(spec.env)}longer-train {spec.dataset.as_posix()} {spec.experiment.as_posix()} "
        f"{' '.join(spec.overrides)} <row overrides> train.seed=<seed>`"
        + (f" with `{' '.join(extra)}` for every run (given on the command line)" if extra else "")
        + f"; data {', '.join(f'`{root}`' for root in roots)}; results lines in `{results.as_posix()}`.", "",
        f"Protocol: seeds {', '.join(map(str, spec.seeds))} per row"
        + "".join(f", {', '.join(map(str, r.seeds))} for `{r.name}`" for r in spec.rows if r.seeds is not None)
        + " (`train.seed`: model init and shuffling); "
        "metrics on the test split; mean ± sample std over the row's seeds; test-set SE: the std of the row's "
        "mean test AUC over bootstrap resamples of the test users (the same resamples in every run). "
        + (f"Δ = the paired difference against the reference row `{spec.reference}`: the mean over the seeds both "
           "rows have of (row − reference), ± its combined standard error √(seed SE² + test SE²) (seed SE: sample "
           "std of the differences / √n; test SE: the std of the mean difference over the same bootstrap "
           f"resamples); ✓ marks n ≥ {MIN_SEEDS} and |Δ| > 2 combined SE, the project's bar for a real effect; "
           "without ✓ a difference is inconclusive. " if spec.reference else "")
        + "GFLOPs/sample: the analytic forward count at data.max_len, beside what FlopCounterMode measures "
          "(relative difference). samples/s counts train step time only."
        + "".join(f" Extension rows (not the paper's model): {', '.join(f'`{r.name}`' for r in rows_of)} — "
                  f"{text}." for text, rows_of in _extensions(spec).items()),
        f"Machine: {machine(threads_used(done.values(), threads))}.", "", provenance_note(done), "",
        *summary_table(summaries, spec.reference), "",
    ]
    for scaling in spec.scaling:
        section, _ = scaling_report(spec.name, summaries, scaling, figures, out.parent)
        text += section + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="longer-sweep", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("spec", help="sweep spec YAML (configs/sweeps/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="added to every run, after the spec's")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="only the spec's first N seeds (a smoke run; default: all of them)")
    parser.add_argument("--threads", type=int, help="torch threads per run (default: cores // jobs)")
    parser.add_argument("--results", default="runs/sweeps", help="results folder (the jsonl and the summary)")
    parser.add_argument("--runs", default="runs/sweeps", help="run folders (logs)")
    parser.add_argument("--figures", default="runs/sweeps/figures", help="scaling figures")
    parser.add_argument("--wandb", choices=["offline", "online", "disabled"],
                        help="logging.wandb_mode of every run (default: the config's)")
    parser.add_argument("--report-only", action="store_true", help="write the summary from the results so far")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="run again the finished runs whose lines other code made (listed at start)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs' commands, run nothing")
    args = parser.parse_intermixed_args(argv)  # key=value may follow the options (make reproduce)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must look like key=value, got {bad}")
    try:
        spec = load_spec(args.spec)
        if args.seeds is not None:
            if args.seeds < 1:
                raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
            spec = spec.limit_seeds(args.seeds)
        threads = split_threads(args.jobs, args.threads, available_cores())
        own_data = any(o.startswith("data.root=") for o in args.overrides)  # the spec's data is not used
        if not (args.dry_run or args.report_only or own_data):
            for prepare in spec.preparations():  # first: a run's config hash takes the vocabulary sizes from the data
                ensure_prepared(*prepare)
        runs = spec.runs(args.overrides)
    except (SpecError, ValueError) as err:
        print(f"longer-sweep: {err}", file=sys.stderr)
        return 2
    results = Path(args.results) / f"{spec.name}.jsonl"
    runs_dir = Path(args.runs) / spec.name
    done = finished(read_results(results), {r.name: r.config_hash for r in runs})
    stale = stale_runs(done)
    pending = [r for r in runs if r.name not in done or (args.rerun_stale and r.name in stale)]
    print(f"{spec.name}: {len(runs)} runs ({len(spec.rows)} rows, {len(spec.seeds)} seeds each unless a row names "
          f"its own), {len(done)} finished, "
          f"{len(pending)} to run, {args.jobs} at a time with {threads} torch thread(s) each; results {results}",
          flush=True)
    if stale:
        print(f"{len(stale)} finished run(s) made by other code than this tree's "
              + ("(re-run now, --rerun-stale):" if args.rerun_stale else "(kept; --rerun-stale runs them again):"))
        for name, reason in stale.items():
            print(f"  {name}: {reason}")
    if args.dry_run:
        for run in pending:
            print(shlex.join(train_command(spec, run, runs_dir, args.wandb)))
        return 0
    failed, interrupted = 0, False
    if pending and not args.report_only:
        # Ctrl-C and `kill` stop the runs (SIGINT also when the shell started us with it ignored, in the background)
        previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            failed, interrupted = Executor(spec, results, runs_dir, threads, args.wandb).run_all(pending, args.jobs)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if not read_results(results):
        print("no finished run yet: no summary written")
        return 130 if interrupted else (1 if failed else 0)
    command = shlex.join(["longer-sweep", args.spec, *args.overrides] + (["--jobs", str(args.jobs)] if args.jobs > 1
                                                                          else []))
    out = write_summary(spec, runs, results, Path(args.figures), command, args.overrides, threads)
    print(f"wrote {out}")
    if interrupted:
        print("interrupted: finished runs are in the results file; run the same command again to continue")
        return 130
    if failed:
        print(f"{failed} run(s) failed (see their train.log); run the same command again to retry them")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
