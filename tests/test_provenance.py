"""provenance.py on a scratch git repository: the commit and dirtiness of the code, and which results lines are
stale (no commit, uncommitted code, or code that changed since their commit; a results-only commit does not
make them stale). And the trainer's runs-table line carries the commit and the resolved config."""

import json
import subprocess

import pytest

from longer_train import provenance


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "longer_train").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "longer_train" / "model.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "a")
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    provenance.code_changed_since.cache_clear()
    yield tmp_path
    provenance.code_changed_since.cache_clear()


def _commit(repo, message):
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", message)


def test_code_state_and_stale_lines(repo):
    state = provenance.code_state()
    assert len(state["commit"]) == 40 and state["dirty"] is False
    line = dict(state)
    assert provenance.stale_reason(line) is None
    assert provenance.stale_reason({"commit": None}) == "no commit recorded"
    assert "uncommitted" in provenance.stale_reason({**line, "dirty": True})

    (repo / "results" / "sweep.jsonl").write_text("{}\n")  # results are not code, nor is the runner
    (repo / "longer_train" / "sweep").mkdir()
    (repo / "longer_train" / "sweep" / "cli.py").write_text("runner = 1\n")
    assert provenance.code_state()["dirty"] is False
    _commit(repo, "results")
    provenance.code_changed_since.cache_clear()
    assert provenance.stale_reason(line) is None  # a later commit of results only

    (repo / "longer_train" / "model.py").write_text("x = 2\n")
    assert provenance.code_state()["dirty"] is True
    provenance.code_changed_since.cache_clear()
    assert "differs" in provenance.stale_reason(line)  # the working tree's code differs from the line's commit
    _commit(repo, "code")
    provenance.code_changed_since.cache_clear()
    assert "differs" in provenance.stale_reason(line)
    assert provenance.stale_reason(provenance.code_state()) is None
    assert "differs" in provenance.stale_reason({"commit": "0" * 40, "dirty": False})  # unknown commit

    (repo / "peer.py").write_text("y = 1\n")  # a script outside the code paths: its lines name it
    _commit(repo, "peer")
    peer_line = provenance.code_state(("peer.py",))
    assert peer_line["code_paths"] == ["peer.py"] and provenance.stale_reason(peer_line) is None
    (repo / "peer.py").write_text("y = 2\n")
    provenance.code_changed_since.cache_clear()
    assert provenance.code_state(("peer.py",))["dirty"] is True and provenance.code_state()["dirty"] is False
    assert "differs" in provenance.stale_reason(peer_line) and provenance.stale_reason(provenance.code_state()) is None


def test_outside_a_checkout_nothing_is_known(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "REPO", tmp_path)
    assert provenance.code_state() == {"commit": None, "dirty": None}


def test_the_runs_table_line_carries_the_commit_at_the_start_and_the_config(repo, tmp_path):
    from test_config import QUICKSTART

    from longer_train.components.run_logger import RunLogger
    from longer_train.config import load_config, to_dict

    cfg = load_config(QUICKSTART, [f"train.runs_table={tmp_path}/runs.jsonl", "logging.wandb_mode=disabled"])
    start = provenance.code_state()
    logger = RunLogger(cfg, tmp_path / "run", to_dict(cfg), enabled=True)
    (repo / "longer_train" / "model.py").write_text("x = 3\n")  # a commit made while the run trains
    _commit(repo, "meanwhile")
    logger.finish({"test_auc": 0.7})
    line = json.loads((tmp_path / "runs.jsonl").read_text())
    assert line["test_auc"] == 0.7 and line["commit"] == start["commit"] != provenance.code_state()["commit"]
    assert line["dirty"] is False and line["config"]["model"]["candidate_match"] == "none"
