"""The quality benchmark's report: inverted orderings are named with their margin, rewriting a dataset's
section of docs/results.md keeps the hand-written text around it, and a results line counts for a run only
with the config hash of the run the benchmark would make now."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


@pytest.fixture
def quality():
    spec = importlib.util.spec_from_file_location("quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    del sys.modules["quality"]


def test_ordering_names_inverted_pairs_and_margins(quality):
    aucs = [("longer", 0.70), ("transformer", 0.72), ("din", 0.65), ("no_sequence", 0.60)]
    text = " ".join(quality.ordering(aucs, list(quality.EXPERIMENTS)))
    assert "Transformer (0.7200) > LONGER (0.7000) > DIN (full) (0.6500)" in text
    assert "LONGER < Transformer by 0.0200" in text and text.count(" by ") == 1


def test_doc_section_is_replaced_between_markers_only(quality, tmp_path, monkeypatch):
    doc = tmp_path / "results.md"
    monkeypatch.setattr(quality, "DOC", doc)
    doc.write_text("# Results\n\nintro\n")
    quality.write_doc_section("taobao", "old table\n")
    doc.write_text(doc.read_text() + "\nhand-written analysis\n")
    quality.write_doc_section("taobao", "new table\n")
    text = doc.read_text()
    assert "new table" in text and "old table" not in text
    assert text.startswith("# Results\n\nintro\n") and text.endswith("hand-written analysis\n")
    assert text.count("<!-- quality:taobao:begin -->") == 1


def test_a_line_counts_only_with_the_config_of_the_run_made_now(quality, tmp_path):
    root = quality.ROOT / "data" / "synthetic-u800"
    seeds = {"longer": [0], "din": [0]}
    plain = quality.expected_hashes("synthetic", root, seeds, [])
    matched = quality.expected_hashes("synthetic", root, seeds, ["model.candidate_match=attention_readout"])
    assert plain.keys() == matched.keys() and all(plain[k] != matched[k] for k in plain)
    table = tmp_path / "quality.jsonl"
    line = {"run": "synthetic-longer-seed0", "test_auc": 0.7, "config_hash": matched["synthetic-longer-seed0"]}
    table.write_text(json.dumps(line) + "\n" + json.dumps({**line, "run": "synthetic-din-seed0"}) + "\n")
    assert quality.read_runs(table, plain) == {}  # a line of the match-on runs is not a paper-model run
    assert list(quality.read_runs(table, matched)) == ["synthetic-longer-seed0"]
