"""A sweep's results file and its summary: which runs are finished (resume), mean ± std per row, and the paired
difference of each row against the reference row over the seeds both have, with its standard error.

Results file: one JSON line per finished run, appended by the runner only (`longer-sweep`), so it can be
committed as the sweep goes. A line counts for a run when its run name and config hash are the run's: a
changed spec or override runs again instead of reusing a result of another setup; the latest such line wins.
Each line records the commit that made it (provenance.py); lines made by other code are listed as stale.

Two sources of uncertainty, both counted for test AUC:
- seeds: the sample std of the per-seed values (of a row, or of its per-seed differences against the
  reference) / √n — how much another training run would move the number;
- the test set: a run's line holds its test AUC on bootstrap resamples of the test users
  (`test_auc_replicates`, components/metrics.py), the same resamples in every run, so replicate b of the row's
  mean over seeds (or of its mean paired difference) is the number as measured on resample b; the std over b
  is how much another draw of test users would move it.
Combined SE = √(seed SE² + test SE²). An effect counts (✓) only with n ≥ 3 seeds and |Δ| > 2 combined SE;
anything less is inconclusive. Metrics without replicates (GAUC, LogLoss, older lines) use the seed SE alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..provenance import stale_reason
from .runs import mean_std

# (results key, column name, digits); AUC and GAUC: higher is better, LogLoss: lower is better
METRICS = (("test_auc", "test AUC", 4), ("test_gauc", "test GAUC", 4), ("test_logloss", "test LogLoss", 4))
REPLICATES = {"test_auc": "test_auc_replicates"}  # metric -> its bootstrap replicates over test users, per line
MIN_SEEDS = 3  # fewer seeds never establish an effect: with 2, a t of 2.6 on one degree of freedom has p ≈ 0.23


MODEL_STATS = ("dense_params", "gflops_analytic", "gflops_counted")  # runs.model_stats, the same for every seed


def read_results(path: Path) -> list[dict[str, Any]]:
    """The lines of a results file ([] if there is none yet); a corrupt line fails naming file and line."""
    if not path.exists():
        return []
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not a JSON results line ({err})") from None
    return lines


def finished(lines: list[dict[str, Any]], wanted: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Results line by run name for the runs of `wanted` (run name -> config hash) that have one."""
    done = {}
    for line in lines:
        if wanted.get(line.get("run")) == line.get("config_hash"):
            done[line["run"]] = line  # a later line of the same run wins
    return done


def stale_runs(done: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Run name -> why its line may not be what this tree's code computes (provenance.stale_reason), for the
    finished runs that have such a reason."""
    return {name: reason for name, line in done.items() if (reason := stale_reason(line))}


def provenance_note(done: dict[str, dict[str, Any]]) -> str:
    """One sentence: how many of the lines each commit made, and how many are stale."""
    if not done:
        return "Provenance: no finished line yet."
    commits: dict[str, int] = {}
    for line in done.values():
        key = (f"`{line['commit'][:7]}`" + (" (uncommitted changes)" if line.get("dirty") is not False else "")
               if line.get("commit") else "no commit recorded")
        commits[key] = commits.get(key, 0) + 1
    stale = stale_runs(done)
    return ("Provenance: lines by commit: " + ", ".join(f"{k} {n}" for k, n in commits.items())
            + (f"; {len(stale)} stale (made by other code than this tree's: `longer-sweep ... --rerun-stale` runs "
               "them again)" if stale else "; none stale") + ".")


def append_result(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


@dataclass(frozen=True)
class Paired:
    """Mean of the per-seed differences (row - reference) over n common seeds, its seed standard error (sample
    std of the differences / sqrt(n); nan for one seed) and its test-set standard error (the std over the
    bootstrap replicates of the mean difference; nan without replicates)."""

    mean: float
    se: float
    n: int
    se_test: float = math.nan

    @property
    def combined_se(self) -> float:
        return math.hypot(self.se, self.se_test) if not math.isnan(self.se_test) else self.se

    @property
    def established(self) -> bool:
        """The project's bar for an effect: n >= MIN_SEEDS and |mean| > 2 combined SE."""
        return self.n >= MIN_SEEDS and self.combined_se > 0 and abs(self.mean) > 2 * self.combined_se

    def format(self, digits: int) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n=1, no SE)"
        parts = f"seeds {self.se:.{digits}f}" + (f", test {self.se_test:.{digits}f}" if not math.isnan(self.se_test)
                                                 else ", no test SE")
        mark = " ✓" if self.established else ""
        return f"{self.mean:+.{digits}f} ± {self.combined_se:.{digits}f} ({parts}){mark}"


def bootstrap_se(replicates: list[list[float]]) -> float:
    """The std over bootstrap replicates of their mean over seeds: `replicates` holds one vector per seed (the
    same resamples in every run); nan for fewer than 2 replicates."""
    mean = np.mean(np.asarray(replicates, dtype=np.float64), axis=0)
    return float(np.nanstd(mean, ddof=1)) if np.isfinite(mean).sum() > 1 else math.nan


def paired_difference(row: dict[int, float], reference: dict[int, float], row_replicates: dict[int, list] | None = None,
                      reference_replicates: dict[int, list] | None = None) -> Paired | None:
    """Paired difference of a row's per-seed values against the reference's, over the seeds both have; with
    both rows' bootstrap replicates for those seeds, also its test-set SE."""
    seeds = sorted(set(row) & set(reference))
    if not seeds:
        return None
    diffs = np.array([row[s] - reference[s] for s in seeds], dtype=np.float64)
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    se_test = math.nan
    if row_replicates and reference_replicates and all(s in row_replicates and s in reference_replicates
                                                       for s in seeds):
        se_test = bootstrap_se([np.subtract(row_replicates[s], reference_replicates[s]) for s in seeds])
    return Paired(float(diffs.mean()), se, len(diffs), se_test)


@dataclass
class RowSummary:
    name: str
    overrides: tuple[str, ...]
    values: dict[str, Any]  # the row's values of the varied keys
    by_seed: dict[str, dict[int, float]]  # metric -> seed -> value
    replicates: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # metric -> seed -> bootstrap values
    paired: dict[str, Paired | None] = field(default_factory=dict)
    model: dict[str, float] = field(default_factory=dict)  # dense_params, gflops_analytic, gflops_counted
    samples_per_s: float = float("nan")

    @property
    def n(self) -> int:
        return len(self.by_seed.get(METRICS[0][0], {}))

    def mean(self, metric: str) -> float:
        values = list(self.by_seed[metric].values())
        return float(np.mean(values)) if values else float("nan")

    def std(self, metric: str) -> float:
        values = list(self.by_seed[metric].values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")

    def test_set_se(self, metric: str) -> float:
        """The test-set SE of the row's mean over seeds (nan unless every seed has replicates)."""
        mine = self.replicates.get(metric, {})
        if not mine or set(mine) != set(self.by_seed[metric]):
            return math.nan
        return bootstrap_se(list(mine.values()))


def summarise(rows: list[tuple[str, tuple[str, ...], dict[str, Any]]], lines: list[dict[str, Any]],
              reference: str | None) -> list[RowSummary]:
    """Per row (name, overrides, values), in spec order: its finished runs' metrics by seed, model statistics
    and the paired differences against the reference row."""
    out = []
    for name, overrides, values in rows:
        mine = [line for line in lines if line["row"] == name]
        by_seed = {key: {ln["seed"]: ln[key] for ln in mine if key in ln} for key, _, _ in METRICS}
        replicates = {key: {ln["seed"]: ln[rep] for ln in mine if rep in ln} for key, rep in REPLICATES.items()}
        summary = RowSummary(name, overrides, values, by_seed, replicates)
        if mine:
            summary.model = {k: mine[0][k] for k in MODEL_STATS if k in mine[0]}
            summary.samples_per_s = float(np.mean([ln["train_samples_per_s"] for ln in mine]))
        out.append(summary)
    ref = next((r for r in out if r.name == reference), None)
    for summary in out:
        summary.paired = {key: (paired_difference(summary.by_seed[key], ref.by_seed[key], summary.replicates.get(key),
                                                  ref.replicates.get(key))
                                if ref is not None and summary is not ref else None) for key, _, _ in METRICS}
    return out


def _flops(model: dict[str, float]) -> tuple[str, str]:
    if "gflops_analytic" not in model:
        return "", ""
    analytic, counted = model["gflops_analytic"], model.get("gflops_counted", float("nan"))
    relative = (analytic - counted) / counted if counted else float("nan")
    return f"{analytic:.4g}", f"{counted:.4g} ({relative:+.1%})"


def summary_table(rows: list[RowSummary], reference: str | None) -> list[str]:
    """Markdown table: per row n, mean ± std over seeds of each metric (AUC also its test-set SE), the paired Δ
    against the reference (± combined SE with its seed and test-set parts, ✓ where established), GFLOPs/sample
    (analytic; FlopCounterMode and the relative difference), dense params, samples/s."""
    header = ["row", "overrides", "n"]
    for key, name, _ in METRICS:
        header += [name] + ([f"{name} test-set SE"] if key in REPLICATES else [])
        header += [f"Δ {name.removeprefix('test ')} vs `{reference}`"] if reference else []
    header += ["GFLOPs/sample", "FlopCounterMode GFLOPs", "dense params", "train samples/s"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        cells = [f"`{row.name}`" + (" (reference)" if row.name == reference else ""),
                 " ".join(f"`{o}`" for o in row.overrides), str(row.n)]
        for key, _, digits in METRICS:
            values = [row.by_seed[key][s] for s in sorted(row.by_seed[key])]
            cells.append(mean_std(values, digits) if values else "not run")
            if key in REPLICATES:
                se = row.test_set_se(key)
                cells.append("" if math.isnan(se) else f"{se:.{digits}f}")
            if reference:
                paired = row.paired.get(key)
                cells.append(paired.format(digits) if paired is not None else "")
        params = row.model.get("dense_params")
        cells += [*_flops(row.model), f"{params:,}" if params is not None else "",
                  f"{row.samples_per_s:.0f}" if row.n else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
