"""The quality benchmark: every model of the paper's Table 1 on one prepared dataset, several seeds each.

For a dataset name it prepares the data if missing (`longer-data prepare`, optionally a random subsample of
users; `longer-data synthetic` for the built-in data), trains each (experiment, seed) as its own
`longer-train configs/datasets/<data>.yaml configs/experiments/<experiment>.yaml ...` process, appends the
runs' results lines to benchmarks/results/quality_<data>.jsonl, and writes the table (mean ± std over seeds
of test AUC / GAUC / LogLoss, GFLOPs/sample, train samples/s) to benchmarks/results/quality_<data>.md and to
the matching section of docs/results.md. A run whose line is in the results file with the same config hash
(`sweep.spec.config_hash`, stored in the line) is not run again, so an interrupted benchmark continues where it
stopped; lines made by other code are listed as stale (provenance.py) and re-run with --rerun-stale.
`--overrides key=value ...` go to every run, e.g. this project's extension `model.candidate_match=attention_readout`
for the match benchmark (the experiment configs run the paper's models).

    python benchmarks/quality.py movielens [--src PATH] [--sample-users N] [--seeds 3] [--experiments ...]
    make bench-quality DATA=movielens [SRC=PATH] [USERS=N] [SEEDS=3] [OVERRIDES='key=value ...']
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np

from longer_train.sweep.runs import BIN, DATASETS, RUN_SETTINGS, ensure_prepared, machine, mean_std, prepare_command
from longer_train.sweep.spec import config_hash, run_config
from longer_train.sweep.summary import METRICS, finished, paired_difference, provenance_note, read_results, stale_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "results.md"

# (experiment config, the paper's Table 1 name); the paper's expected order of test AUC, highest first
EXPERIMENTS = {
    "longer": "LONGER", "transformer": "Transformer", "hstu": "HSTU", "din": "DIN (full)",
    "din_recent50": "DIN (Recent50)", "twin": "TWIN", "sum_pooling": "SumPooling", "no_sequence": "Base (no sequence)",
}
# default --multi-seed: mean ± std over --seeds; the rest --baseline-seeds
MULTI_SEED = ("longer", "transformer", "hstu", "din")
# the same for every run (and the dataset's batch size): one validation pass at the end of the epoch, no
# checkpoint, no W&B, no progress bar
def run_settings(data: str) -> list[str]:
    return [f"data.batch_size={DATASETS[data].batch_size}", *RUN_SETTINGS, "logging.wandb_mode=disabled"]


def train_command(data: str, experiment: str, root: Path, seed: int, table: Path, overrides: list[str]) -> list[str]:
    return [
        str(BIN / "longer-train"), *run_configs(data, experiment), *run_overrides(data, root, seed, overrides),
        f"train.runs_table={table.relative_to(ROOT)}", f"train.output_dir=runs/quality-{data}",
        f"train.run_name={run_name(data, experiment, seed)}",
    ]


def run_configs(data: str, experiment: str) -> list[str]:
    return [f"configs/datasets/{DATASETS[data].config or data + '.yaml'}", f"configs/experiments/{experiment}.yaml"]


def run_overrides(data: str, root: Path, seed: int, overrides: list[str]) -> list[str]:
    return [f"data.root={root.relative_to(ROOT)}", f"train.seed={seed}", *run_settings(data), *overrides]


def expected_hashes(data: str, root: Path, seeds: dict[str, list[int]], overrides: list[str]) -> dict[str, str]:
    """Run name -> the config hash of the run this benchmark would make now (what a results line must match)."""
    return {run_name(data, experiment, seed): config_hash(run_config(run_configs(data, experiment),
                                                                     run_overrides(data, root, seed, overrides)))
            for experiment, experiment_seeds in seeds.items() for seed in experiment_seeds}


def run_name(data: str, experiment: str, seed: int) -> str:
    return f"{data}-{experiment}-seed{seed}"


def read_runs(table: Path, expected: dict[str, str]) -> dict[str, dict]:
    """Results lines of the runs this benchmark would make now (name and config hash, `expected_hashes`) by run
    name (a run that was repeated counts once: its latest line); lines of other runs, e.g. on another subsample
    or with other settings, are kept in the file but not returned."""
    return finished(read_results(table), expected)


def paired_auc(data: str, runs: dict[str, dict], experiment: str, reference: str, seeds: list[int]) -> str:
    """Mean over the seeds both ran of (experiment - reference) test AUC, ± its standard error."""
    done = lambda e: {s: runs[run_name(data, e, s)] for s in seeds if run_name(data, e, s) in runs}
    auc = lambda e: {s: line["test_auc"] for s, line in done(e).items()}
    replicates = lambda e: {s: line["test_auc_replicates"] for s, line in done(e).items()
                            if "test_auc_replicates" in line}
    paired = (paired_difference(auc(experiment), auc(reference), replicates(experiment), replicates(reference))
              if experiment != reference else None)
    return "" if paired is None else f"{paired.format(4)} (n={paired.n})"


def summarise(
    data: str, runs: dict[str, dict], seeds: dict[str, list[int]], experiments: list[str], reference: str = "longer"
) -> tuple[list, list]:
    """(table rows, (experiment, mean test AUC) of the experiments with results) over the given seeds."""
    rows, aucs = [], []
    for experiment in experiments:
        done = [runs[n] for n in (run_name(data, experiment, s) for s in seeds[experiment]) if n in runs]
        if not done:
            rows.append([EXPERIMENTS[experiment], f"`{experiment}`", "0", "not run", *[""] * 7])
            continue
        wall = [r["wall_s"] for r in done if "wall_s" in r]
        rows.append([
            EXPERIMENTS[experiment], f"`{experiment}`", str(len(done)),
            *(mean_std([r[key] for r in done], digits) for key, _, digits in METRICS),
            paired_auc(data, runs, experiment, reference, seeds[experiment]),
            f"{done[0]['gflops_per_sample']:.3g}", f"{np.mean([r['train_samples_per_s'] for r in done]):.0f}",
            str(done[0]["max_len"]), f"{np.mean(wall) / 60:.1f}" if wall else "",
        ])
        aucs.append((experiment, float(np.mean([r["test_auc"] for r in done]))))
    return rows, aucs


def ordering(aucs: list[tuple[str, float]], experiments: list[str]) -> list[str]:
    """The measured order of mean test AUC and, for each adjacent pair of the paper's expected order that is
    inverted, by how much."""
    measured = sorted(aucs, key=lambda pair: -pair[1])
    lines = ["Measured order of mean test AUC: " + " > ".join(f"{EXPERIMENTS[e]} ({a:.4f})" for e, a in measured)
             + "."]
    mean = dict(aucs)
    expected = [e for e in experiments if e in mean]
    inverted = [(a, b) for a, b in zip(expected, expected[1:]) if mean[a] < mean[b]]
    lines.append("Expected (the paper): " + " > ".join(EXPERIMENTS[e] for e in expected) + ". "
                 + ("Every adjacent pair holds." if not inverted else "Inverted adjacent pairs: " + "; ".join(
                     f"{EXPERIMENTS[a]} < {EXPERIMENTS[b]} by {mean[b] - mean[a]:.4f}" for a, b in inverted) + "."))
    return lines


def oracle_lines(meta: dict) -> list[str]:
    """What the generator's label model allows (synthetic data that records it): test AUC of its scores."""
    oracle = meta.get("oracle_auc", {}).get("test")
    if not oracle:
        return []
    names = {"true_probability": "the true click probabilities (the oracle)",
             "newest_50_oracle": "the best score of the newest 50 events alone",
             "logistic_count_full": "logistic regression on log(1 + count of the candidate's category in the history)",
             "logistic_count_recent50": "the same over the newest 50 events"}
    return ["What the data allows (test AUC, `oracle_auc` in the dataset's meta.json): "
            + "; ".join(f"{names.get(k, k)} **{v:.4f}**" for k, v in oracle.items()) + ".", ""]


def report(data: str, bench_command: str, prepare: list[str], meta: dict, rows: list, order: list[str],
           seeds: dict[str, list[int]], runs_table: Path, reference: str = "longer", overrides: list[str] = (),
           provenance: str = "") -> str:
    header = ["model", "experiment config", "n", *(name for _, name, _ in METRICS),
              f"Δ test AUC vs {EXPERIMENTS[reference]} (paired over seeds, ± combined SE: seeds and test set)",
              "GFLOPs/sample",
              "train samples/s", "max_len", "min/run"]
    table = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    params = meta.get("params", {})
    parts = []
    if "sample_users" in params:
        sample = params["sample_users"]
        parts.append(f"**{sample['users']} of {sample['of']} users** drawn at random (seed {sample['seed']})")
    if "rows_per_user" in params:
        parts.append(f"**at most {params['rows_per_user']['rows']} rows per user and split**, drawn at random "
                     f"(seed {params['rows_per_user']['seed']}; a kept row's history is still every earlier event)")
    subsample = ("subsampled: " + "; ".join(parts) + "; ids, vocabularies and the time split's cut points are "
                 "those of the whole dataset") if parts else "every row (no subsampling)"
    rows_line = ", ".join(f"{split} {n:,}" for split, n in meta.get("rows", {}).items())
    length = meta.get("history_length", {})
    return "\n".join([
        f"Command: `{bench_command}` (one process per run: `longer-data {prepare[1]} ...` once, then "
        f"`longer-train configs/datasets/{DATASETS[data].config or data + '.yaml'} "
        f"configs/experiments/<experiment>.yaml data.root=... train.seed=<seed> {' '.join(run_settings(data))} "
        f"{' '.join(overrides)}{' ' if overrides else ''}"
        f"...`; every run's results line is in `{runs_table.relative_to(ROOT)}`).",
        "",
        f"Data: `longer-data {' '.join(shlex.quote(a) for a in prepare[1:])}` — {subsample}. "
        f"Rows: {rows_line}. Stored history length p50 {length.get('p50')}, p90 {length.get('p90')}, "
        f"max {length.get('max')}; the models keep the newest `data.max_len` events (column max_len).",
        "",
        "Protocol: one epoch, " + "; ".join(f"seeds {', '.join(map(str, s))} for {', '.join(e)}"
                                            for s, e in _by_seeds(seeds)) + " (`train.seed`: model init and "
        "shuffling), metrics on the test split "
        f"({'unseen users' if meta.get('task') == 'match' else 'the last ~10 % of time'}); "
        "mean ± sample std over the n seeds. GFLOPs/sample "
        "is the analytic forward count of the dense model at max_len; samples/s counts train step time only. "
        "Δ: ✓ only with n ≥ 3 seeds and |Δ| > 2 combined SE (sweep/summary.py); otherwise inconclusive.",
        f"Machine: {machine()}.",
        "",
        *([provenance, ""] if provenance else []),
        *oracle_lines(meta),
        *table,
        "",
        *order,
        "",
    ])


def _by_seeds(seeds: dict[str, list[int]]) -> list[tuple[list[int], list[str]]]:
    groups: dict[tuple, list[str]] = {}
    for experiment, s in seeds.items():
        groups.setdefault(tuple(s), []).append(experiment)
    return [(list(s), e) for s, e in groups.items()]


def write_doc_section(data: str, body: str) -> None:
    """Replace the text between this dataset's markers in docs/results.md (appended if there are none)."""
    begin, end = f"<!-- quality:{data}:begin -->", f"<!-- quality:{data}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Results\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {data}\n\n{block}\n"
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", choices=sorted(DATASETS))
    parser.add_argument("--src", help="raw dataset for `longer-data prepare` (default: the copy in ../shared/data)")
    parser.add_argument("--sample-users", type=int, help="users kept (0 = all; default per dataset: "
                        + ", ".join(f"{k} {v.sample_users}" for k, v in DATASETS.items()) + ")")
    parser.add_argument("--rows-per-user", type=int, help="rows kept per user and split (0 = all; default: "
                        + ", ".join(f"{k} {v.rows_per_user}" for k, v in DATASETS.items()) + ")")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of the --multi-seed experiments")
    parser.add_argument("--baseline-seeds", type=int, default=1, help="seeds 0..N-1 of the other experiments")
    parser.add_argument("--multi-seed", nargs="+", default=list(MULTI_SEED), choices=list(EXPERIMENTS),
                        help="experiments run with --seeds seeds (default: " + " ".join(MULTI_SEED) + ")")
    parser.add_argument("--reference", default="longer", choices=list(EXPERIMENTS),
                        help="the row the paired differences are taken against (default longer)")
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=list(EXPERIMENTS))
    parser.add_argument("--overrides", nargs="+", default=[], metavar="key=value",
                        help="config overrides for every run")
    parser.add_argument("--report-only", action="store_true", help="write the tables from the runs so far")
    parser.add_argument("--rerun-stale", action="store_true", help="run again the runs whose lines other code made")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    sample_users = DATASETS[args.data].sample_users if args.sample_users is None else args.sample_users
    rows_per_user = DATASETS[args.data].rows_per_user if args.rows_per_user is None else args.rows_per_user
    prepare, out = prepare_command(args.data, args.src, sample_users, rows_per_user)
    ensure_prepared(prepare, out)
    root = ROOT / out
    seeds = {e: list(range(args.seeds if e in args.multi_seed else args.baseline_seeds)) for e in args.experiments}
    table = RESULTS / f"quality_{args.data}.jsonl"
    expected = expected_hashes(args.data, root, seeds, args.overrides)
    stale = stale_runs(read_runs(table, expected))
    for name, reason in stale.items():
        print(f"stale: {name}: {reason}" + ("" if args.rerun_stale else " (kept; --rerun-stale runs it again)"))
    for seed in range(max(map(len, seeds.values()))) if not args.report_only else []:  # seed-major
        for experiment in (e for e in args.experiments if seed in seeds[e]):
            name = run_name(args.data, experiment, seed)
            if name in read_runs(table, expected) and not (args.rerun_stale and name in stale):
                continue
            command = train_command(args.data, experiment, root, seed, table, args.overrides)
            print(f"$ {' '.join(command)}", flush=True)
            start = time.perf_counter()
            subprocess.run(command, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
            lines = read_results(table)  # the trainer just appended this run's line
            lines[-1].update(wall_s=round(time.perf_counter() - start, 1), config_hash=expected[name])
            table.write_text("".join(json.dumps(row) + "\n" for row in lines))
            runs = read_runs(table, expected)
            print(f"  {name}: test auc {runs[name]['test_auc']:.4f} in {runs[name]['wall_s']:.0f} s", flush=True)
    runs = read_runs(table, expected)
    rows, aucs = summarise(args.data, runs, seeds, args.experiments, args.reference)
    meta = json.loads((root / "meta.json").read_text())
    bench = f"make bench-quality DATA={args.data} USERS={sample_users} ROWS={rows_per_user} SEEDS={args.seeds}"
    if args.baseline_seeds != 1:
        bench += f" BASELINE_SEEDS={args.baseline_seeds}"
    if args.multi_seed != list(MULTI_SEED):
        bench += f" MULTI_SEED='{' '.join(args.multi_seed)}'"
    if args.reference != "longer":
        bench += f" REFERENCE={args.reference}"
    if args.overrides:
        bench += f" OVERRIDES='{' '.join(args.overrides)}'"
    body = report(args.data, bench, prepare, meta, rows, ordering(aucs, args.experiments), seeds, table,
                  args.reference, args.overrides, provenance_note(runs))
    out = RESULTS / f"quality_{args.data}.md"
    out.write_text(f"# Quality benchmark: {args.data}\n\n{body}")
    write_doc_section(args.data, body)
    print(f"wrote {out.relative_to(ROOT)} and the '{args.data}' section of {DOC.relative_to(ROOT)}")
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
