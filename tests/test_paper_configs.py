"""Configs that stand for the paper run the paper's models: the final model's experiment config, every experiment
config of Table 1, and every row of configs/sweeps/ that does not declare an `extension` resolve to every
extension of this project off (`EXTENSIONS`: `model.candidate_match: none`, `model.stream_tokens: false`;
docs/paper.md "Deviations from the paper"). Rows that do declare one must actually differ, or the declaration
is stale."""

from pathlib import Path

import pytest

from longer_train.config import load_config, non_default
from longer_train.sweep.spec import load_spec

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPECS = sorted((CONFIGS / "sweeps").glob("*.yaml"))
# this project's options beyond the paper -> their value in the paper's model
EXTENSIONS = {"candidate_match": "none", "stream_tokens": False}


def extensions_on(cfg) -> dict:
    """The extensions a resolved config turns on: name -> its value."""
    return {name: getattr(cfg.model, name) for name, off in EXTENSIONS.items() if getattr(cfg.model, name) != off}


@pytest.mark.parametrize("experiment", sorted((CONFIGS / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_config_runs_the_papers_model(experiment):
    cfg = load_config([CONFIGS / "datasets" / "synthetic.yaml", experiment])
    assert extensions_on(cfg) == {}


def test_the_final_model_and_the_user_facing_configs_turn_every_extension_off():
    for top in ("paper.yaml", "quickstart.yaml", "movielens.yaml", "taobao.yaml"):
        assert extensions_on(load_config([CONFIGS / top])) == {}, top
    paper = load_config([CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / "longer_paper.yaml"])
    assert extensions_on(paper) == {} and paper.data.max_len == 2000 and paper.model.merge_k == 8


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_every_paper_row_of_the_sweeps_runs_the_papers_model(path):
    spec = load_spec(path)
    spec.seeds = spec.seeds[:1]
    runs = {run.row: run for run in spec.runs()}
    for row in spec.rows:
        on = extensions_on(runs[row.name].cfg)
        if row.extension is None:
            assert on == {}, f"{path.name}: paper row {row.name!r} runs {on}"
    extension_rows = [row for row in spec.rows if row.extension is not None]
    if extension_rows:  # an extension sweep or row uses the extension somewhere
        assert any(extensions_on(runs[row.name].cfg) for row in extension_rows), path.name


def test_the_match_sweeps_are_declared_extensions():
    for name in ("match_ablation_din", "match_ablation_longer"):
        spec = load_spec(CONFIGS / "sweeps" / f"{name}.yaml")
        assert all(row.extension for row in spec.rows), name


def test_a_run_made_under_the_old_default_never_matches_one_under_the_new():
    """model.candidate_match's default changed (attention_readout -> none): the run name and a sweep's config
    hash come from the non-default values, so the field is kept in them whatever it holds."""
    cfg = load_config([CONFIGS / "quickstart.yaml"])
    assert non_default(cfg)["model"]["candidate_match"] == "none"


# experiment -> dense parameters added by candidate_match (attention, attention_readout); docs/model.md's table
MATCH_PARAMETERS = {"longer": (8, 1032), "longer_paper": (8, 1032), "transformer": (2, 258), "twin": (4, 516),
                    "hstu": (4, 260), "din": (128, 384), "din_recent50": (128, 384), "sum_pooling": (0, 256)}


@pytest.mark.parametrize("experiment", sorted(MATCH_PARAMETERS))
def test_what_the_candidate_match_adds_to_each_model(experiment):
    from longer_train.models.ranking import build_model

    sizes = [f"data.tables.{t}.num_embeddings={n}" for t, n in
             (("item", 100), ("category", 10), ("action", 3), ("user", 10), ("segment", 8))]
    dense = {}
    for match in ("none", "attention", "attention_readout"):
        cfg = load_config([CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / f"{experiment}.yaml"],
                          [*sizes, f"model.candidate_match={match}"])
        dense[match] = sum(p.numel() for p in build_model(cfg).dense.parameters())
    added = (dense["attention"] - dense["none"], dense["attention_readout"] - dense["none"])
    assert added == MATCH_PARAMETERS[experiment]
