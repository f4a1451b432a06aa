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
