"""A sweep's results file and its summary: which runs are finished (resume), mean ± std per row, and the paired
difference of each row against the reference row over the seeds both have, with its standard error.

Results file: one JSON line per finished run, appended by the runner only (`longer-sweep`), so it can be
committed as the sweep goes. A line counts for a run when its run name and config hash are the run's: a
changed spec or override runs again instead of reusing a result of another setup; the latest such line wins.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .runs import mean_std

# (results key, column name, digits); AUC and GAUC: higher is better, LogLoss: lower is better
METRICS = (("test_auc", "test AUC", 4), ("test_gauc", "test GAUC", 4), ("test_logloss", "test LogLoss", 4))


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


def append_result(path: Path, line: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


@dataclass(frozen=True)
class Paired:
    """Mean of the per-seed differences (row - reference) over n common seeds and its standard error
    (sample std of the differences / sqrt(n); nan for one seed)."""

    mean: float
    se: float
    n: int

    @property
    def beyond_two_se(self) -> bool:
        return self.n >= 2 and self.se > 0 and abs(self.mean) > 2 * self.se

    def format(self, digits: int) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (n=1, no SE)"
        mark = " ✓" if self.beyond_two_se else ""
        return f"{self.mean:+.{digits}f} ± {self.se:.{digits}f}{mark}"


def paired_difference(row: dict[int, float], reference: dict[int, float]) -> Paired | None:
    """Paired difference of a row's per-seed values against the reference's, over the seeds both have."""
    seeds = sorted(set(row) & set(reference))
    if not seeds:
        return None
    diffs = np.array([row[s] - reference[s] for s in seeds], dtype=np.float64)
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    return Paired(float(diffs.mean()), se, len(diffs))


@dataclass
class RowSummary:
    name: str
    overrides: tuple[str, ...]
    values: dict[str, Any]  # the row's values of the varied keys
    by_seed: dict[str, dict[int, float]]  # metric -> seed -> value
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


def summarise(rows: list[tuple[str, tuple[str, ...], dict[str, Any]]], lines: list[dict[str, Any]],
              reference: str | None) -> list[RowSummary]:
    """Per row (name, overrides, values), in spec order: its finished runs' metrics by seed, model statistics
    and the paired differences against the reference row."""
    out = []
    for name, overrides, values in rows:
        mine = [line for line in lines if line["row"] == name]
        summary = RowSummary(name, overrides, values, {key: {ln["seed"]: ln[key] for ln in mine if key in ln}
                                                       for key, _, _ in METRICS})
        if mine:
            summary.model = {k: mine[0][k] for k in MODEL_STATS if k in mine[0]}
            summary.samples_per_s = float(np.mean([ln["train_samples_per_s"] for ln in mine]))
        out.append(summary)
    ref = next((r for r in out if r.name == reference), None)
    for summary in out:
        summary.paired = {key: (paired_difference(summary.by_seed[key], ref.by_seed[key])
                                if ref is not None and summary is not ref else None) for key, _, _ in METRICS}
    return out


def _flops(model: dict[str, float]) -> tuple[str, str]:
    if "gflops_analytic" not in model:
        return "", ""
    analytic, counted = model["gflops_analytic"], model.get("gflops_counted", float("nan"))
    relative = (analytic - counted) / counted if counted else float("nan")
    return f"{analytic:.4g}", f"{counted:.4g} ({relative:+.1%})"


def summary_table(rows: list[RowSummary], reference: str | None) -> list[str]:
    """Markdown table: per row n, mean ± std of each metric, the paired Δ against the reference (± SE, ✓ beyond
    2 SE), GFLOPs/sample (analytic; FlopCounterMode and the relative difference), dense params, samples/s."""
    header = ["row", "overrides", "n"]
    for _, name, _ in METRICS:
        header += [name] + ([f"Δ {name.removeprefix('test ')} vs `{reference}`"] if reference else [])
    header += ["GFLOPs/sample", "FlopCounterMode GFLOPs", "dense params", "train samples/s"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        cells = [f"`{row.name}`" + (" (reference)" if row.name == reference else ""),
                 " ".join(f"`{o}`" for o in row.overrides), str(row.n)]
        for key, _, digits in METRICS:
            values = [row.by_seed[key][s] for s in sorted(row.by_seed[key])]
            cells.append(mean_std(values, digits) if values else "not run")
            if reference:
                paired = row.paired.get(key)
                cells.append(paired.format(digits) if paired is not None else "")
        params = row.model.get("dense_params")
        cells += [*_flops(row.model), f"{params:,}" if params is not None else "",
                  f"{row.samples_per_s:.0f}" if row.n else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
