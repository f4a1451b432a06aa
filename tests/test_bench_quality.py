"""The quality benchmark's report: inverted orderings are named with their margin, and rewriting a dataset's
section of docs/results.md keeps the hand-written text around it."""

import importlib.util
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
