"""Scaling fits and figures for sweeps over a numeric axis: y = α·x^β + γ (the paper's form) fitted to the per-row
mean test AUC and LogLoss against x (a config key such as data.max_len, or the rows' dense parameters or forward
GFLOPs/sample), one fit per series value (e.g. per depth), with α, β, γ and R² (of the fit to the means).

Figures: log x axis, one line per series, points = mean over seeds with ± sample std error bars (the legend
says how many seeds each point has), the fitted curve through them unless the fit is degenerate (an exponent
at the fitter's bound: the data do not determine it, and a drawn curve would suggest they do); PNG plus the
points and fits as CSV, into longer-sweep's --figures folder.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .spec import DERIVED_X, Scaling
from .summary import RowSummary

FIT_METRICS = (("test_auc", "test AUC"), ("test_logloss", "test LogLoss"))
AXIS_LABELS = {
    "data.max_len": "history length (events, data.max_len)",
    "params": "dense parameters (count)",
    "gflops": "forward GFLOPs per sample",
    "model.token_dim": "token width d",
}
MIN_POINTS = 4  # three parameters: at least one degree of freedom left
BETA_BOUND = 5.0  # the exponent is fitted within ±BETA_BOUND


@dataclass(frozen=True)
class Fit:
    alpha: float
    beta: float
    gamma: float
    r2: float
    n: int
    error: str | None = None  # why there is no fit

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.alpha * np.power(x, self.beta) + self.gamma

    @property
    def degenerate(self) -> bool:
        """The exponent ran to the fitter's bound (or a parameter is not finite): the points do not determine it."""
        finite = all(math.isfinite(v) for v in (self.alpha, self.beta, self.gamma))
        return not finite or abs(abs(self.beta) - BETA_BOUND) < 1e-3

    def format(self) -> str:
        if self.error:
            return f"no fit ({self.error})"
        text = f"α = {self.alpha:.4g}, β = {self.beta:.3g}, γ = {self.gamma:.4g}, R² = {self.r2:.3f} (n = {self.n})"
        return text + (f"; degenerate (β at the fitter's bound ±{BETA_BOUND:g}): not drawn" if self.degenerate else "")


def fit_power_law(x: np.ndarray | list[float], y: np.ndarray | list[float]) -> Fit:
    """Least-squares fit of y = α·x^β + γ (x > 0); the best of a few starting exponents. x is scaled to
    [.., 1] while fitting for conditioning, and α converted back."""
    from scipy.optimize import curve_fit

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(np.unique(x)) < MIN_POINTS:
        return Fit(*[math.nan] * 4, n=len(x), error=f"needs ≥ {MIN_POINTS} distinct x for 3 parameters")
    if (x <= 0).any():
        return Fit(*[math.nan] * 4, n=len(x), error="x must be > 0")
    scale = x.max()
    t = x / scale
    law = lambda t, a, b, c: a * np.power(t, b) + c
    best, best_sse = None, math.inf
    for b0 in (-1.0, -0.5, -0.2, 0.2, 0.5, 1.0):
        span = t.min() ** b0 - 1.0
        a0 = (y[np.argmin(t)] - y[np.argmax(t)]) / span if span else 1.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params, _ = curve_fit(law, t, y, p0=(a0, b0, y[np.argmax(t)]), bounds=(
                    [-np.inf, -BETA_BOUND, -np.inf], [np.inf, BETA_BOUND, np.inf]), maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(((law(t, *params) - y) ** 2).sum())
        if sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        return Fit(*[math.nan] * 4, n=len(x), error="least squares did not converge")
    a, b, c = (float(v) for v in best)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - best_sse / total if total > 0 else math.nan
    return Fit(a / scale**b, b, c, r2, len(x))


def short_number(value: float) -> str:
    """Three significant digits, with k / M / G above a thousand: 223105 -> 223k, 0.01255 -> 0.0126."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def axis_value(row: RowSummary, axis: str) -> float:
    """The row's x: a config key's value, or its dense parameters / analytic GFLOPs (`params`, `gflops`)."""
    if axis in DERIVED_X:
        return float(row.model.get(DERIVED_X[axis], math.nan))
    return float(row.values[axis])


def scaling_report(
    name: str, rows: list[RowSummary], scaling: Scaling, figures: Path, links_from: Path
) -> tuple[list[str], list[Path]]:
    """Fit each metric against scaling.x for every series value; write `<name>_<x>.png`, `<name>_<x>.csv`
    (points) and `<name>_<x>_fits.csv` into `figures`. Returns markdown lines (links relative to the folder
    `links_from`) and the files written."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.n]
    series_of = lambda r: r.values[scaling.series] if scaling.series else None
    series = list(dict.fromkeys(series_of(r) for r in done))
    stem = f"{name}_{scaling.x.split('.')[-1]}" + (f"_by_{scaling.series.split('.')[-1]}" if scaling.series else "")
    figures.mkdir(parents=True, exist_ok=True)
    label = scaling.series.split(".")[-1] if scaling.series else ""
    xlabel = AXIS_LABELS.get(scaling.x, scaling.x)

    tick_format = matplotlib.ticker.FuncFormatter(lambda v, _: short_number(v))
    points, fits = [], []
    fig, axes = plt.subplots(1, len(FIT_METRICS), figsize=(6 * len(FIT_METRICS), 4.2))
    for ax, (metric, metric_name) in zip(axes, FIT_METRICS):
        for s in series:
            mine = sorted((r for r in done if series_of(r) == s), key=lambda r: axis_value(r, scaling.x))
            x = np.array([axis_value(r, scaling.x) for r in mine])
            mean = np.array([r.mean(metric) for r in mine])
            std = np.array([r.std(metric) for r in mine])
            fit = fit_power_law(x, mean)
            seeds = sorted({r.n for r in mine})
            n = f"n = {seeds[0]}" if len(seeds) == 1 else f"n = {seeds[0]}–{seeds[-1]}"
            line_label = (f"{label} = {s}" if scaling.series else "all rows") + f" ({n} seeds per point)"
            bars = ax.errorbar(x, mean, yerr=np.nan_to_num(std), fmt="o", capsize=3, label=line_label)
            if not fit.error and not fit.degenerate:
                grid = np.geomspace(x.min(), x.max(), 100)
                ax.plot(grid, fit(grid), "-", color=bars[0].get_color(),
                        label=f"fit: α={fit.alpha:.3g}, β={fit.beta:.3g}, γ={fit.gamma:.4g}, R²={fit.r2:.3f}")
            fits.append((metric, s, fit))
            points += [(s, xv, metric, r.n, m, sd) for xv, r, m, sd in zip(x, mine, mean, std)]
        ax.set_xscale("log")  # ticks at the measured x values
        ax.set_xticks(sorted({axis_value(r, scaling.x) for r in done}))
        ax.xaxis.set_major_formatter(tick_format)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric_name} (mean; bars ± sample std over the seeds)")
        ax.set_title(f"{name}: {metric_name} vs {xlabel.split(' (')[0]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = figures / f"{stem}.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)

    points_csv, fits_csv = figures / f"{stem}.csv", figures / f"{stem}_fits.csv"
    with points_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([scaling.series or "series", scaling.x, "metric", "n", "mean", "std"])
        writer.writerows(points)
    with fits_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", scaling.series or "series", "alpha", "beta", "gamma", "r2", "n", "error"])
        writer.writerows([(m, s, fit.alpha, fit.beta, fit.gamma, fit.r2, fit.n, fit.error or "") for m, s, fit in fits])

    link = lambda path: Path(os.path.relpath(path, links_from)).as_posix()
    lines = [f"Fits of y = α·x^β + γ, x = {xlabel} ([figure]({link(png)}), points "
             f"[{points_csv.name}]({link(points_csv)}), fits [{fits_csv.name}]({link(fits_csv)})):", "",
             f"| metric | {label or 'series'} | fit |", "|---|---|---|"]
    lines += [f"| {dict(FIT_METRICS)[m]} | {s if s is not None else 'all'} | {fit.format()} |" for m, s, fit in fits]
    return lines, [png, points_csv, fits_csv]
