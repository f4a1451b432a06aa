"""longer-sweep: spec parsing (rows, grids, percentage queries, errors that name the key), resume (finished runs
are not run again, a failed one is), the paired statistics of the summary on a fake results file, thread
splitting, and the power-law fit and figure of scaling sweeps."""

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from longer_train.sweep import cli
from longer_train.sweep.scaling import fit_power_law, scaling_report
from longer_train.sweep.spec import Scaling, SpecError, load_spec
from longer_train.sweep.summary import finished, paired_difference, summarise, summary_table

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write_spec(tmp_path: Path, body: str, name: str = "demo") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        dataset: {CONFIGS / 'datasets' / 'synthetic.yaml'}
        experiment: {CONFIGS / 'experiments' / 'longer.yaml'}
        """) + textwrap.dedent(body))
    return path


def test_rows_seeds_reference_and_percentage_queries(tmp_path):
    (tmp_path / "din.yaml").write_text(f"defaults: [{CONFIGS / 'experiments' / 'din.yaml'}]\n")
    spec = load_spec(write_spec(tmp_path, """\
        overrides: [data.max_len=512, model.merge_k=8, model.num_queries=40%]
        seeds: 2
        reference: recent
        rows:
          - {name: recent, overrides: [model.query_selection=recent]}
          - {name: all queries, overrides: [model.num_queries=100%]}
          - {name: din, experiment: din.yaml}
        """))
    assert spec.name == "demo" and spec.seeds == [0, 1] and spec.reference == "recent"
    assert [r.name for r in spec.rows] == ["recent", "all queries", "din"]
    assert spec.rows[2].experiment == tmp_path / "din.yaml"  # relative to the spec file
    runs = spec.runs(extra=["train.max_steps=2"], data_root="data/x")
    assert [r.name for r in runs] == ["recent-seed0", "recent-seed1", "all_queries-seed0", "all_queries-seed1",
                                      "din-seed0", "din-seed1"]
    assert runs[0].cfg.model.num_queries == round(0.4 * 64) and runs[2].cfg.model.num_queries == 64  # of 512 / 8
    assert runs[1].cfg.train.seed == 1 and runs[1].cfg.train.max_steps == 2 and runs[1].cfg.data.root == "data/x"
    assert runs[0].values == {"model.query_selection": "recent", "model.num_queries": 26}
    assert runs[0].config_hash != runs[1].config_hash  # the seed is part of what a run computes
    assert runs[4].cfg.model.name == "din"


def test_a_row_may_run_more_seeds_than_the_spec(tmp_path):
    """Where a difference under 0.005 decides a verdict, its rows run 5 seeds while the rest run 3 (issue 30);
    `--seeds N` (a smoke run) cuts every row's seeds to its first N."""
    spec = load_spec(write_spec(tmp_path, """\
        seeds: 2
        rows:
          - {name: a, seeds: 4}
          - {name: b}
          - {name: c, seeds: [7, 9]}
        """))
    assert [r.name for r in spec.runs()] == ["a-seed0", "a-seed1", "a-seed2", "a-seed3", "b-seed0", "b-seed1",
                                             "c-seed7", "c-seed9"]
    assert [r.name for r in spec.limit_seeds(1).runs()] == ["a-seed0", "b-seed0", "c-seed7"]


def test_grid_rows_and_scaling(tmp_path):
    spec = load_spec(write_spec(tmp_path, """\
        seeds: [3, 5]
        grid: {model.num_self_layers: [1, 2], data.max_len: [32, 64, 128]}
        reference: num_self_layers=1,max_len=128
        scaling: [{x: data.max_len, series: model.num_self_layers}, {x: gflops}]
        """))
    assert len(spec.rows) == 6 and spec.rows[0].name == "num_self_layers=1,max_len=32"
    assert spec.rows[0].overrides == ("model.num_self_layers=1", "data.max_len=32")
    assert spec.scaling == [Scaling("data.max_len", "model.num_self_layers"), Scaling("gflops", None)]
    runs = spec.runs()
    assert runs[0].name == "num_self_layers_1_max_len_32-seed3" and runs[0].values == {
        "model.num_self_layers": 1, "data.max_len": 32}


@pytest.mark.parametrize("body, message", [
    ("rows: [{name: a}]\nbogus: 1\n", r"unknown key\(s\) \['bogus'\]"),
    ("rows: [{name: a}]\ngrid: {data.max_len: [1]}\n", "exactly one of 'rows'"),
    ("rows: [{name: a}]\nreference: b\n", "'reference' 'b' is not a row"),
    ("rows: [{name: a}]\nseeds: 0\n", "'seeds' must be"),
    ("rows: [{name: a, overrides: [model.bogus=1]}]\n", "row 'a'.*unknown config key 'model.bogus'"),
    ("rows: [{name: a, overrides: [data.max_len=10%]}]\n", "only model.num_queries may be given as a percentage"),
    ("rows: [{name: a}, {name: a}]\n", "row names must be distinct"),
    ("rows: [{name: a, seeds: [1, 1]}]\n", r"rows\[0\].seeds lists a seed twice"),
    ("rows: [{name: a}]\nenv: [A]\n", "env must map variable names to values"),
    ("rows: [{name: a}]\nenv: {1A: x}\n", "'1A' is not an environment variable name"),
    ("rows: [{name: a}]\nenv: {A: [1]}\n", "env.A must be a string or a number"),
])
def test_bad_specs_fail_naming_the_key(tmp_path, body, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(tmp_path, body)).runs()


def _line(row: str, seed: int, auc: float, logloss: float, **extra) -> dict:
    return {"run": f"{row}-seed{seed}", "row": row, "seed": seed, "test_auc": auc, "test_logloss": logloss,
            "test_gauc": auc - 0.1, "train_samples_per_s": 100.0, "dense_params": 1000, "gflops_analytic": 0.5,
            "gflops_counted": 0.5, **extra}


def test_paired_statistics_on_a_fake_results_file():
    lines = [_line("ref", s, a, 0.6) for s, a in enumerate([0.70, 0.71, 0.72])]
    lines += [_line("better", s, a, 0.59 - 0.001 * s) for s, a in enumerate([0.72, 0.72, 0.75])]
    lines += [_line("two_seeds", s, a, 0.6) for s, a in [(1, 0.70), (2, 0.73)]]  # seeds 1 and 2 only
    rows = [("ref", (), {}), ("better", ("model.x=1",), {}), ("two_seeds", (), {}), ("missing", (), {})]
    summaries = summarise(rows, lines, reference="ref")

    paired = summaries[1].paired["test_auc"]  # differences 0.02, 0.01, 0.03
    assert paired.n == 3 and paired.mean == pytest.approx(0.02) and paired.se == pytest.approx(0.01 / math.sqrt(3))
    assert paired.established and math.isnan(paired.se_test) and paired.combined_se == paired.se  # no replicates
    two = summaries[2].paired["test_auc"]  # over the common seeds 1, 2: differences -0.01, +0.01
    assert two.n == 2 and two.mean == pytest.approx(0.0) and not two.established
    assert summaries[0].paired["test_auc"] is None and summaries[3].n == 0
    assert summaries[1].mean("test_auc") == pytest.approx(0.73) and summaries[1].std("test_auc") == pytest.approx(
        np.std([0.72, 0.72, 0.75], ddof=1))
    table = "\n".join(summary_table(summaries, "ref"))
    better = "| `better` | `model.x=1` | 3 | 0.7300 ± 0.0173 |  | +0.0200 ± 0.0058 (seeds 0.0058, no test SE) ✓ |"
    assert better in table
    assert "| `missing` |  | 0 | not run |" in table and "0.5 (+0.0%)" in table
    assert paired_difference({0: 1.0}, {1: 1.0}) is None  # no common seed


def test_two_seeds_never_establish_an_effect_and_the_test_set_se_counts():
    """n >= 3 seeds and |Δ| > 2 combined SE: a large, steady difference over 2 seeds stays inconclusive, and one
    that clears 2 seed SEs but not 2 combined SEs (a noisy test set) too."""
    rng = np.random.default_rng(0)
    noise = rng.normal(scale=0.01, size=(3, 200))  # the test set's resamples: the same in every run
    reps = lambda base, seed, shift: list(base + shift + noise[seed])
    lines = [_line("ref", s, 0.70, 0.6, test_auc_replicates=reps(0.70, s, 0.0)) for s in range(3)]
    lines += [_line("two", s, 0.80, 0.6, test_auc_replicates=reps(0.70, s, 0.10)) for s in range(2)]
    # the row's scores move the resampled AUCs differently from the reference's: the difference has test noise
    lines += [_line("noisy", s, 0.71 + 0.0005 * s, 0.6, test_auc_replicates=list(0.71 + 0.02 * rng.normal(size=200)))
              for s in range(3)]
    lines += [_line("clear", s, 0.72 + 0.0005 * s, 0.6, test_auc_replicates=reps(0.72, s, 0.0005 * s))
              for s in range(3)]
    rows = [(name, (), {}) for name in ("ref", "two", "noisy", "clear")]
    ref, two, noisy, clear = summarise(rows, lines, reference="ref")
    assert ref.test_set_se("test_auc") == pytest.approx(np.std(noise.mean(0), ddof=1))
    assert two.paired["test_auc"].n == 2 and not two.paired["test_auc"].established  # +0.10, but 2 seeds
    p = noisy.paired["test_auc"]
    assert abs(p.mean) > 2 * p.se and p.se_test > p.se and not p.established  # only the seed SE would pass it
    c = clear.paired["test_auc"]
    assert c.se_test < 1e-3 and c.established  # paired replicates: the shared test-set noise cancels
    assert "test " in c.format(4) and c.format(4).endswith("✓")


def test_resume_runs_only_what_is_not_finished(tmp_path, monkeypatch, capsys):
    """A fake longer-train writes each run's results line; the first sweep has one run fail, the second runs that
    one only, the third nothing. A line of another config (changed spec) does not count as finished."""
    spec_path = write_spec(tmp_path, """\
        seeds: 2
        reference: a
        rows:
          - {name: a, overrides: [model.num_queries=4]}
          - {name: b, overrides: [model.num_queries=8]}
        """)
    calls = []

    def fake_command(spec, run, runs_dir, wandb):
        calls.append(run.name)
        fail = run.name == "b-seed1" and not (tmp_path / "failed_once").exists()
        result = _line(run.row, run.seed, 0.7 + 0.01 * run.seed + 0.001 * (run.row == "b"), 0.6)
        code = f"""
import json, pathlib, sys
if {fail}:
    pathlib.Path({str(tmp_path / 'failed_once')!r}).touch(); sys.exit(3)
pathlib.Path({str(runs_dir / run.name / 'result.jsonl')!r}).write_text(json.dumps({result!r}) + "\\n")
"""
        return [sys.executable, "-c", code]

    monkeypatch.setattr(cli, "train_command", fake_command)
    monkeypatch.setattr(cli, "model_stats", lambda cfg: {"dense_params": 7, "gflops_analytic": 1.0,
                                                         "gflops_counted": 1.0})
    monkeypatch.setattr(cli, "available_cores", lambda: 4)  # --jobs 2: 2 threads a run
    args = [str(spec_path), "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--jobs", "2"]
    results = tmp_path / "results" / "demo.jsonl"
    assert cli.main(args) == 1  # b-seed1 failed
    assert sorted(calls) == ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]
    assert sorted(json.loads(ln)["run"] for ln in results.read_text().splitlines()) == ["a-seed0", "a-seed1",
                                                                                          "b-seed0"]
    calls.clear()
    assert cli.main(args) == 0
    assert calls == ["b-seed1"]
    calls.clear()
    assert cli.main(args) == 0 and calls == []
    summary = (tmp_path / "results" / "demo.md").read_text()
    assert "4 of 4 runs finished" in summary and "| `b` | `model.num_queries=8` | 2 |" in summary
    # the fake lines record no commit: listed as stale and kept, re-run on request
    assert "4 stale" in summary and "no commit recorded 4" in summary
    assert "a-seed0: no commit recorded" in capsys.readouterr().out
    assert cli.main([*args, "--rerun-stale"]) == 0 and sorted(calls) == ["a-seed0", "a-seed1", "b-seed0", "b-seed1"]
    # a report rewritten by another invocation (one job: 4 threads) names the threads the runs had
    assert cli.main([*args[:-2], "--report-only"]) == 0
    assert "torch threads 2 per run" in (tmp_path / "results" / "demo.md").read_text()

    lines = [json.loads(ln) for ln in results.read_text().splitlines()]
    runs = load_spec(spec_path).runs()
    wanted = {r.name: r.config_hash for r in runs}
    assert set(finished(lines, wanted)) == set(wanted)
    wanted["a-seed0"] = "another config"
    assert "a-seed0" not in finished(lines, wanted)


def test_the_spec_env_reaches_every_run_and_the_report(tmp_path, monkeypatch):
    """`env` (e.g. glibc malloc's threshold) is set in each run's process, after this process's environment and
    before the runner's thread count; the run's train.log and the report show it."""
    spec_path = write_spec(tmp_path, """\
        rows: [{name: a}]
        env: {LONGER_SWEEP_TEST: 4194304, OMP_NUM_THREADS: 7}
        """)
    assert load_spec(spec_path).env == {"LONGER_SWEEP_TEST": "4194304", "OMP_NUM_THREADS": "7"}
    monkeypatch.setenv("LONGER_SWEEP_TEST", "from the shell")

    def fake_command(spec, run, runs_dir, wandb):
        code = f"""
import json, os, pathlib
line = {_line(run.row, run.seed, 0.7, 0.6)!r}
line["env_seen"] = [os.environ.get("LONGER_SWEEP_TEST"), os.environ.get("OMP_NUM_THREADS")]
pathlib.Path({str(runs_dir / run.name / 'result.jsonl')!r}).write_text(json.dumps(line) + "\\n")
"""
        return [sys.executable, "-c", code]

    monkeypatch.setattr(cli, "train_command", fake_command)
    monkeypatch.setattr(cli, "model_stats", lambda cfg: {"dense_params": 7, "gflops_analytic": 1.0,
                                                         "gflops_counted": 1.0})
    monkeypatch.setattr(cli, "available_cores", lambda: 2)
    args = [str(spec_path), "--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--jobs", "1"]
    assert cli.main(args) == 0
    line = json.loads((tmp_path / "results" / "demo.jsonl").read_text())
    assert line["env_seen"] == ["4194304", "2"]  # the spec's value; the runner's threads (2 cores, 1 job)
    assert next((tmp_path / "runs").rglob("a-seed0/train.log")).read_text().startswith(
        "$ LONGER_SWEEP_TEST=4194304 OMP_NUM_THREADS=7 ")
    assert "Each run: `LONGER_SWEEP_TEST=4194304 OMP_NUM_THREADS=7 longer-train" in (
        tmp_path / "results" / "demo.md").read_text()


def test_threads_are_split_so_jobs_times_threads_fit_the_cores():
    assert cli.split_threads(2, None, 2) == 1 and cli.split_threads(1, None, 2) == 2
    assert cli.split_threads(3, None, 2) == 1  # never below one
    assert cli.split_threads(2, 4, 8) == 4 and cli.split_threads(2, 4, 4) == 2  # capped at cores // jobs


def test_power_law_fit_recovers_its_parameters_and_needs_four_points():
    x = np.array([32, 64, 128, 256, 512, 1024], dtype=float)
    fit = fit_power_law(x, 0.8 - 0.3 * x**-0.5)
    assert fit.error is None and fit.r2 > 0.9999
    assert (fit.alpha, fit.beta, fit.gamma) == pytest.approx((-0.3, -0.5, 0.8), rel=1e-3)
    assert "needs ≥ 4" in fit_power_law(x[:3], x[:3]).error


def test_a_fit_whose_exponent_runs_to_the_bound_is_degenerate_and_not_drawn(tmp_path, monkeypatch):
    x = np.array([1, 2, 4, 8, 16], dtype=float)
    step = fit_power_law(x, [0.0, 0.0, 0.0, 0.0, 1.0])  # a jump at the last point: no exponent describes it
    assert step.degenerate and "degenerate" in step.format()
    assert not fit_power_law(x, 0.8 - 0.3 * x**-0.5).degenerate
    drawn = []
    monkeypatch.setattr("matplotlib.axes.Axes.plot", lambda self, *a, **k: drawn.append(k.get("label")))
    lines = [_line(f"L{v}", s, y + 0.001 * s, 0.5 - 0.01 * np.log(v)) for v, y in zip(x, [0.0, 0, 0, 0, 1])
             for s in (0, 1)]
    summaries = summarise([(f"L{v}", (), {"data.max_len": v}) for v in x], lines, reference=None)
    text, _ = scaling_report("step", summaries, Scaling("data.max_len", None), tmp_path, tmp_path)
    assert any("test AUC" in ln and "degenerate" in ln for ln in text)
    assert len(drawn) == 1 and "R²" in drawn[0]  # the LogLoss fit only


def test_scaling_report_writes_figure_and_csvs(tmp_path):
    lines = [_line(f"L{length}-d{depth}", s, 0.8 - 0.3 * length**-0.5 + 0.01 * depth + 0.001 * s, 0.5, )
             for length in (32, 64, 128, 256) for depth in (1, 2) for s in (0, 1)]
    rows = [(f"L{length}-d{depth}", (), {"data.max_len": length, "model.num_self_layers": depth})
            for length in (32, 64, 128, 256) for depth in (1, 2)]
    summaries = summarise(rows, lines, reference=None)
    text, files = scaling_report("demo", summaries, Scaling("data.max_len", "model.num_self_layers"),
                                 tmp_path / "figures", tmp_path)
    stem = "demo_max_len_by_num_self_layers"
    assert [f.name for f in files] == [f"{stem}.png", f"{stem}.csv", f"{stem}_fits.csv"]
    assert all(f.stat().st_size > 0 for f in files)
    assert f"](figures/{stem}.png)" in text[0]
    fits = (tmp_path / "figures" / f"{stem}_fits.csv").read_text().splitlines()
    assert len(fits) == 1 + 2 * 2  # header + (AUC, LogLoss) x two depths
    auc_depth1 = next(ln for ln in text if ln.startswith("| test AUC | 1 |"))
    assert "β = -0.5" in auc_depth1 and "R² = 1.000" in auc_depth1


def test_every_reproduction_spec_loads_with_its_configs():
    """configs/sweeps/*.yaml: each parses and every run's config loads (what `make reproduce` starts from)."""
    specs = sorted((CONFIGS / "sweeps").glob("*.yaml"))
    assert {p.stem for p in specs} >= {"table1", "table2_merge", "table2_queries", "table2_rules", "scaling_length",
                                       "scaling_params", "scaling_flops"}
    for path in specs:
        spec = load_spec(path)
        spec.seeds = spec.seeds[:1]
        assert spec.runs(), path


def test_config_hash_takes_vocabulary_sizes_as_resolved_from_the_data(tmp_path):
    """A dataset config with `num_embeddings: auto` finds the runs of one that spelled the same sizes out."""
    root = tmp_path / "data"
    root.mkdir()
    vocab = {"items": 20000, "categories": 50, "actions": 3, "users": 4000, "user_segments": 8}
    (root / "meta.json").write_text(json.dumps({"vocab": vocab}))
    spelled = [f"data.tables.{t}.num_embeddings={n}" for t, n in
               (("item", 20000), ("category", 50), ("action", 3), ("user", 4000), ("segment", 8))]
    one = "seeds: 1\nrows: [{name: a}]\n"
    auto = load_spec(write_spec(tmp_path, one, name="auto")).runs(data_root=str(root))
    fixed = load_spec(write_spec(tmp_path, f"{one}overrides: [{', '.join(spelled)}]\n", name="fixed"))
    fixed = fixed.runs(data_root=str(root))
    assert auto[0].cfg.data.tables["category"].num_embeddings == 50
    assert auto[0].config_hash == fixed[0].config_hash
    other = load_spec(write_spec(tmp_path, f"{one}overrides: [data.tables.category.num_embeddings=60]\n",
                                 name="other")).runs(data_root=str(root))
    assert other[0].config_hash != auto[0].config_hash


def test_rows_may_bring_their_own_data(tmp_path):
    """A row's `data` keys replace the spec's for that row: its own prepared folder (e.g. more users)."""
    spec = load_spec(write_spec(tmp_path, """\
        data: {name: synthetic, users: 800}
        seeds: 1
        rows:
          - {name: small}
          - {name: large, data: {users: 4000}}
        """))
    assert [p[1] for p in spec.preparations()] == ["data/synthetic-u800", "data/synthetic-u4000"]
    assert "--users" in spec.preparations()[1][0] and "4000" in spec.preparations()[1][0]
    assert [r.cfg.data.root for r in spec.runs()] == ["data/synthetic-u800", "data/synthetic-u4000"]
    with pytest.raises(SpecError, match="data"):
        load_spec(write_spec(tmp_path, "rows: [{name: a, data: {name: taobao}}]\n", name="bad"))


def test_a_peer_row_runs_the_peer_script_under_its_own_config_hash(tmp_path):
    spec = load_spec(write_spec(tmp_path, f"""\
        seeds: 1
        rows:
          - {{name: din, experiment: {CONFIGS / 'experiments' / 'din.yaml'}}}
          - {{name: peer, experiment: {CONFIGS / 'experiments' / 'din.yaml'}, peer: fuxictr_din}}
        """))
    ours, peer = spec.runs()
    assert ours.peer is None and peer.peer == "fuxictr_din" and ours.config_hash != peer.config_hash
    command = cli.train_command(spec, peer, tmp_path, None)
    assert command[:2] == [sys.executable, "benchmarks/peer_fuxictr.py"]
    assert str(CONFIGS / "experiments" / "din.yaml") in command
    assert cli.train_command(spec, ours, tmp_path, None)[0].endswith("longer-train")
    with pytest.raises(SpecError, match="'peer' must be one of"):
        load_spec(write_spec(tmp_path, "rows: [{name: a, peer: other}]\n", name="bad"))
