"""The CPU benchmarks still run against the current code (a refactor of the Trainer once broke the loader
benchmark unnoticed): the loader benchmark's step and resume measurements, on a small generated dataset."""

import runpy
from pathlib import Path

import pytest
from test_config import QUICKSTART

from longer_train.config import load_config
from longer_train.data import synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_data")
    synthetic.generate(root, users=120, max_len=64, seed=1)
    return root


def test_loader_benchmark_measures_step_and_resume(small, tmp_path):
    bench = runpy.run_path(str(ROOT / "benchmarks" / "loader.py"), run_name="benchmark")
    overrides = [*bench["OVERRIDES"], f"data.root={small}", "data.max_len=64", "data.batch_size=32",
                 f"train.output_dir={tmp_path}"]
    assert bench["step_rate"](load_config(QUICKSTART, overrides), 2) > 0
    costs = bench["resume_costs"](load_config(QUICKSTART, overrides))
    assert [at for at, *_ in costs] == [0, costs[0][1] // 2, costs[0][1] - 1]
    assert all(seconds > 0 and 1 <= reads <= 3 for _, _, seconds, reads in costs), costs


def test_summarise_runs_groups_seeds_of_one_run(tmp_path):
    """The table behind the extra checks in docs/results.md: seeds of one run averaged, a repeated run counted
    once (its latest line)."""
    summarise = runpy.run_path(str(ROOT / "benchmarks" / "summarise_runs.py"), run_name="benchmark")["summarise"]
    line = lambda run, auc: {"run": run, "test_auc": auc, "test_gauc": 0.5, "test_logloss": 0.6}
    rows = summarise([line("m-a-seed0", 0.1), line("m-a-seed1", 0.2), line("m-a-seed1", 0.3), line("m-b-seed0", 0.7)])
    assert rows[2] == "| m-a | 2 | 0.2000 ± 0.1414 | 0.5000 ± 0.0000 | 0.6000 ± 0.0000 |"
    assert rows[3] == "| m-b | 1 | 0.7000 | 0.5000 | 0.6000 |"


def test_token_merge_benchmark_prints_the_table(capsys):
    table = runpy.run_path(str(ROOT / "benchmarks" / "token_merge.py"), run_name="benchmark")["main"](["--smoke"])
    rows = [line for line in table.splitlines() if line.startswith("| 64 |")]
    assert [row.split(" | ")[1].split(" ")[0] for row in rows] == ["real", "full"]
    assert all(row.rstrip(" |").endswith("x") for row in rows)
