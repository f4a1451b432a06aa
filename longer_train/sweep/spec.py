"""Sweep specs (`configs/sweeps/*.yaml`): which runs a sweep is made of.

    description: what the sweep shows (free text)
    data: {name: synthetic, users: 800}   # optional: prepared by longer-data if missing; sets data.root.
                                          # name synthetic | movielens | taobao; users (0 = all),
                                          # rows_per_user (0 = all), src (raw data for movielens/taobao)
    dataset: ../datasets/synthetic.yaml   # dataset config; paths are relative to the spec file
    experiment: ../experiments/longer.yaml
    overrides: [data.batch_size=64]       # key=value for every run
    seeds: 3                              # seeds 0..2, or a list [0, 1, 2]
    rows:                                 # either named rows ...
      - {name: recent, overrides: [model.query_selection=recent]}
      - {name: din, experiment: ../experiments/din.yaml}      # a row may name its own experiment config
      - {name: 4k users, data: {users: 4000}}                 # ... and its own data (merged into `data`)
      - {name: fuxictr_din, experiment: ../experiments/din.yaml, peer: fuxictr_din}   # a peer library's model
                                          # (runs.PEERS) on the run's data, seed, batch size and max_len
      - {name: longer, seeds: 5}          # a row's own seeds (a count or a list), where a small gap decides
    grid:                                 # ... or a grid: one row per combination, named key=value,...
      model.num_self_layers: [1, 2]
      data.max_len: [32, 64, 128]
    reference: recent                     # the row every other one is compared with, seed by seed
    extension: candidate match            # optional, on the spec or a row: what it adds to the paper's models
                                          # (docs/paper.md "Deviations from the paper"); rows without one
                                          # stand for the paper's rows and run its models
    env: {MALLOC_MMAP_THRESHOLD_: 4194304}   # optional: environment variables of every run (e.g. glibc
                                          # malloc's, docs/reliability.md); the runner's thread count wins
    scaling:                              # optional: power-law fits and figures (sweep/scaling.py)
      - {x: data.max_len, series: model.num_self_layers}   # x: a config key, `params` or `gflops`

`model.num_queries` may be given as a percentage of the merged length, e.g. `model.num_queries=40%`:
round(40 % of ceil(data.max_len / model.merge_k)), at least 1, computed from each run's own config.
A run is one (row, seed): `longer-train DATASET EXPERIMENT RUN_SETTINGS overrides row-overrides train.seed=S`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..config import Config, ConfigError, load_config, non_default
from ..data.vocab import dataset_sizes, resolve_num_embeddings
from .runs import DATASETS, PEERS, RUN_SETTINGS

SPEC_KEYS = {"description", "data", "dataset", "experiment", "overrides", "seeds", "rows", "grid", "reference",
             "scaling", "extension", "env"}
DATA_KEYS = {"name", "users", "rows_per_user", "src"}
ROW_KEYS = {"name", "overrides", "experiment", "data", "extension", "peer", "seeds"}
DERIVED_X = {"params": "dense_params", "gflops": "gflops_analytic"}  # scaling axes read off the results


class SpecError(ValueError):
    """A sweep spec is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]
    experiment: Path | None = None  # replaces the spec's experiment config for this row
    data: dict[str, Any] | None = None  # replaces keys of the spec's `data` for this row (e.g. users)
    extension: str | None = None  # what the row adds to the paper's model (its own or the spec's); None: a paper row
    peer: str | None = None  # runs.PEERS: a public library's model on the same data and config (run's data, seed,
    # batch size, max_len), trained by its own code instead of longer-train
    seeds: tuple[int, ...] | None = None  # this row's seeds (more where a small difference decides); None: the spec's


@dataclass(frozen=True)
class Scaling:
    x: str  # a config key (e.g. data.max_len), `params` or `gflops`
    series: str | None  # a config key: one line per value (e.g. model.num_self_layers)


@dataclass
class Run:
    """One (row, seed) with its resolved config."""

    row: str
    seed: int
    configs: list[Path]
    overrides: list[str]  # after RUN_SETTINGS, with the percentage queries resolved
    cfg: Config
    config_hash: str  # of everything the run computes (its non-default config values)
    values: dict[str, Any]  # the run's values of the keys the sweep varies (and its scaling keys)
    peer: str | None = None  # a peer library's model trains it instead of longer-train (runs.PEERS)

    @property
    def name(self) -> str:
        return f"{safe_name(self.row)}-seed{self.seed}"


@dataclass
class SweepSpec:
    name: str
    path: Path
    description: str
    dataset: Path
    experiment: Path
    overrides: list[str]
    seeds: list[int]
    rows: list[Row]
    reference: str | None
    scaling: list[Scaling] = field(default_factory=list)
    data: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)  # environment variables of every run

    def varied_keys(self) -> list[str]:
        """Config keys set by some row, in first-seen order, plus the config keys of the scaling axes."""
        keys = [o.partition("=")[0] for row in self.rows for o in row.overrides]
        keys += [k for s in self.scaling for k in (s.x, s.series) if k and k not in DERIVED_X]
        return list(dict.fromkeys(keys))

    def prepare(self, row: Row | None = None) -> tuple[list[str], str] | None:
        """The longer-data command and folder of the spec's `data` (with `row`'s own keys), if it names one."""
        from .runs import prepare_command

        if self.data is None:
            return None
        data = {**self.data, **((row.data or {}) if row is not None else {})}
        spec = DATASETS[data["name"]]
        users = data.get("users", spec.sample_users)
        rows = data.get("rows_per_user", spec.rows_per_user)
        return prepare_command(data["name"], data.get("src"), users, rows)

    def preparations(self) -> list[tuple[list[str], str]]:
        """The distinct data preparations of the rows, in row order."""
        found = {}
        for row in self.rows:
            prepare = self.prepare(row)
            if prepare is not None:
                found.setdefault(prepare[1], prepare)
        return list(found.values())

    def row_seeds(self, row: Row) -> list[int]:
        """The seeds `row` runs: its own, else the spec's."""
        return list(row.seeds) if row.seeds is not None else self.seeds

    def limit_seeds(self, n: int) -> SweepSpec:
        """The spec with the first n seeds of the spec and of every row (`--seeds N`, a smoke run)."""
        rows = [dataclasses.replace(r, seeds=None if r.seeds is None else r.seeds[:n]) for r in self.rows]
        return dataclasses.replace(self, seeds=self.seeds[:n], rows=rows)

    def runs(self, extra: list[str] = (), data_root: str | None = None) -> list[Run]:
        """Every (row, seed) run, row-major, with its config loaded and checked (a bad key fails here, before
        anything runs). `extra` overrides go to every run, after the spec's (e.g. a short run for a smoke
        test); `data_root`, when given, is every run's data folder, else each row's prepared `data` (if any)."""
        runs = []
        for row in self.rows:
            configs = [self.dataset, row.experiment or self.experiment]
            prepared = self.prepare(row)
            root = data_root if data_root is not None else (prepared[1] if prepared else None)
            for seed in self.row_seeds(row):
                overrides = [*RUN_SETTINGS, *self.overrides, *row.overrides, f"train.seed={seed}", *extra]
                if root is not None:
                    overrides.insert(len(RUN_SETTINGS), f"data.root={root}")
                where = f"{self.path}: row {row.name!r}"
                overrides = resolve_percent_queries(configs, overrides, where)
                try:
                    cfg = run_config(configs, overrides)
                except ConfigError as err:
                    raise SpecError(f"{where}: {err}") from None
                values = {key: get_value(cfg, key) for key in self.varied_keys()}
                runs.append(Run(row.name, seed, configs, overrides, cfg, config_hash(cfg, row.peer), values,
                                row.peer))
        return runs


def run_config(configs: list[Path], overrides: list[str]) -> Config:
    """A run's config as its process will see it: loaded and checked, `num_embeddings: auto` resolved from the
    data when the data are there."""
    cfg = load_config(configs, overrides)
    if dataset_sizes(cfg.data.root) is not None:
        resolve_num_embeddings(cfg.data)
    return cfg


def safe_name(text: str) -> str:
    """A row name as a file and run name: runs of characters other than letters, digits, . _ - become _."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def config_hash(cfg: Config, peer: str | None = None) -> str:
    """Of everything a run computes: its non-default config values without the runner's bookkeeping (run name,
    output folders, results table, logging), and the peer library that trains it if any; two runs with equal
    hashes train the same model on the same data. Vocabulary sizes count as the numbers they resolve to
    (`run_config` resolves `num_embeddings: auto` when the data is there), so a config written with `auto` finds
    the runs of one that spelled the sizes out."""
    values = non_default(cfg)
    values.pop("logging", None)
    train = values.get("train", {})
    for key in ("run_name", "output_dir", "runs_table", "progress_bar", "log_every", "resume"):
        train.pop(key, None)
    if peer is not None:
        values["peer"] = peer
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def get_value(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        if isinstance(value, dict) and part in value:  # e.g. data.tables.<table>
            value = value[part]
        elif not isinstance(value, dict) and hasattr(value, part):
            value = getattr(value, part)
        else:
            raise SpecError(f"config key '{key}' does not exist")
    return value


def resolve_percent_queries(configs: list[Path], overrides: list[str], where: str) -> list[str]:
    """`model.num_queries=P%` -> the integer round(P/100 * merged length) of the run's own config (>= 1)."""
    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        if not value.endswith("%"):
            out.append(item)
            continue
        if key != "model.num_queries":
            raise SpecError(f"{where}: {item!r}: only model.num_queries may be given as a percentage")
        try:
            percent = float(value[:-1])
        except ValueError:
            raise SpecError(f"{where}: {item!r}: expected a number before %") from None
        others = [o for o in overrides if o.partition("=")[0] != key]
        try:
            cfg = load_config(configs, others)
        except ConfigError as err:
            raise SpecError(f"{where}: {err}") from None
        merged = math.ceil(cfg.data.max_len / cfg.model.merge_k)
        out.append(f"{key}={max(1, round(percent / 100 * merged))}")
    return out


def _seeds(value: Any, where: str) -> list[int]:
    """A seed count (n: seeds 0..n-1) or a list of distinct integers."""
    seeds = value
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds > 0:
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SpecError(f"{where} must be a positive count or a list of integers, got {value!r}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"{where} lists a seed twice: {seeds}")
    return seeds


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise SpecError(f"{where} must be a list of key=value strings, got {value!r}")
    return list(value)


def _text(value: Any, where: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise SpecError(f"{where} must be a non-empty text, got {value!r}")
    return value


def _check_keys(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _relative(base: Path, path: str) -> Path:
    """`path` relative to the spec's folder `base`, normalised (configs/sweeps/../x.yaml -> configs/x.yaml)."""
    return Path(os.path.normpath(base / path))


def _format(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and check a sweep spec (the format is in this module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"sweep spec not found: {path}")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep spec is a mapping")
    _check_keys(raw, SPEC_KEYS, str(path))
    for key in ("dataset", "experiment"):
        if not isinstance(raw.get(key), str):
            raise SpecError(f"{path}: '{key}' (a config path relative to the spec) is required")
    base = path.parent
    data = raw.get("data")
    if data is not None:
        if not isinstance(data, dict) or data.get("name") not in DATASETS:
            raise SpecError(f"{path}: 'data.name' must be one of {sorted(DATASETS)}, got {data!r}")
        _check_keys(data, DATA_KEYS, f"{path}: 'data'")
    seeds = _seeds(raw.get("seeds", 1), f"{path}: 'seeds'")

    extension = _text(raw.get("extension"), f"{path}: extension")
    rows: list[Row] = []
    if ("rows" in raw) == ("grid" in raw):
        raise SpecError(f"{path}: give exactly one of 'rows' (a list) and 'grid' (key: [values, ...])")
    if "rows" in raw:
        if not isinstance(raw["rows"], list) or not raw["rows"]:
            raise SpecError(f"{path}: 'rows' must be a non-empty list of {{name, overrides, experiment}}")
        for i, row in enumerate(raw["rows"]):
            where = f"{path}: rows[{i}]"
            if not isinstance(row, dict) or not isinstance(row.get("name"), str) or not row["name"]:
                raise SpecError(f"{where} needs a 'name'")
            _check_keys(row, ROW_KEYS, where)
            experiment = _relative(base, row["experiment"]) if row.get("experiment") else None
            row_data = row.get("data")
            if row_data is not None:
                if data is None or not isinstance(row_data, dict):
                    raise SpecError(f"{where}: 'data' (a mapping) needs the spec's own 'data' to add to")
                _check_keys(row_data, DATA_KEYS - {"name"}, f"{where}.data")
            peer = row.get("peer")
            if peer is not None and peer not in PEERS:
                raise SpecError(f"{where}: 'peer' must be one of {sorted(PEERS)}, got {peer!r}")
            row_seeds = None if row.get("seeds") is None else tuple(_seeds(row["seeds"], f"{where}.seeds"))
            rows.append(Row(row["name"], tuple(_strings(row.get("overrides"), f"{where}.overrides")), experiment,
                            row_data, _text(row.get("extension", extension), f"{where}.extension"), peer, row_seeds))
    else:
        grid = raw["grid"]
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise SpecError(f"{path}: 'grid' must map config keys to non-empty lists of values")
        for combo in itertools.product(*grid.values()):
            pairs = list(zip(grid, combo))
            name = ",".join(f"{key.split('.')[-1]}={_format(v)}" for key, v in pairs)
            rows.append(Row(name, tuple(f"{key}={_format(v)}" for key, v in pairs), extension=extension))
    names = [r.name for r in rows]
    if len(set(map(safe_name, names))) != len(names):
        raise SpecError(f"{path}: row names must be distinct (also as file names): {names}")

    reference = raw.get("reference")
    if reference is not None and reference not in names:
        raise SpecError(f"{path}: 'reference' {reference!r} is not a row; rows: {names}")
    scaling = []
    for i, item in enumerate(raw.get("scaling") or []):
        if not isinstance(item, dict) or not isinstance(item.get("x"), str):
            raise SpecError(f"{path}: scaling[{i}] needs 'x' (a config key, params or gflops)")
        _check_keys(item, {"x", "series"}, f"{path}: scaling[{i}]")
        scaling.append(Scaling(item["x"], item.get("series")))
    return SweepSpec(
        name=path.stem, path=path, description=str(raw.get("description", "")).strip(),
        dataset=_relative(base, raw["dataset"]), experiment=_relative(base, raw["experiment"]),
        overrides=_strings(raw.get("overrides"), f"{path}: overrides"), seeds=seeds, rows=rows,
        reference=reference, scaling=scaling, data=data, env=_env(raw.get("env"), f"{path}: env"),
    )


def _env(value: Any, where: str) -> dict[str, str]:
    """A mapping of environment variable names to scalar values, as strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where} must map variable names to values, got {value!r}")
    for name, v in value.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SpecError(f"{where}: {name!r} is not an environment variable name")
        if isinstance(v, (dict, list)) or v is None:
            raise SpecError(f"{where}.{name} must be a string or a number, got {v!r}")
    return {name: str(v) for name, v in value.items()}
