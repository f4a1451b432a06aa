"""Scoring from a training checkpoint: the scorer reproduces the trained model's test AUC, the batch CLI
writes scores, the export CLI's programs agree, and requests scored together equal requests scored alone
(the HTTP service: test_http.py)."""

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from serve_models import raw_requests

from longer_train.components.metrics import auc
from longer_train.data.schema import SchemaError
from longer_train.serve.cli import main as serve_main
from longer_train.serve.scorer import Scorer


def test_scorer_reproduces_the_trained_model(trained):
    summary, scorer, test = trained
    scores = scorer.score_table(test.drop_columns(["label"]))
    assert scores.shape == (test.num_rows,) and np.isfinite(scores).all()
    assert auc(test["label"].to_numpy(), scores) == pytest.approx(summary["test_auc"], abs=1e-6)
    # a labelled table scores the same, and row order does not matter
    reversed_scores = scorer.score_table(test.take(np.arange(test.num_rows)[::-1]))[::-1]
    np.testing.assert_allclose(reversed_scores, scores, atol=1e-6)


def test_batch_cli_writes_scores(trained, tmp_path):
    summary, scorer, test = trained
    requests = tmp_path / "requests.parquet"
    pq.write_table(test.slice(0, 50), requests)
    out = tmp_path / "scores.parquet"
    args = ["score", "--checkpoint", summary["checkpoint"], "--requests", str(requests), "--out", str(out)]
    assert serve_main(args) == 0
    written = pq.read_table(out)
    np.testing.assert_allclose(written["score"].to_numpy(), scorer.score_table(test.slice(0, 50)), atol=1e-6)


def test_batch_cli_scores_a_sequence_store_split(trained, tmp_path):
    """--requests may be a store's split (no history columns): histories are rebuilt from events/ beside it."""
    summary, scorer, test = trained
    out = tmp_path / "scores.parquet"
    split = Path(scorer.cfg.data.root) / "test"
    args = ["score", "--checkpoint", summary["checkpoint"], "--requests", str(split), "--out", str(out)]
    assert serve_main(args) == 0
    written = pq.read_table(out)
    assert "hist_item_id" in written.column_names and written.num_rows == test.num_rows
    np.testing.assert_allclose(written["score"].to_numpy(), scorer.score_table(test), atol=1e-6)


def test_export_cli_programs_reproduce_the_trained_model(trained, tmp_path):
    """The exported programs take raw ids (export.py) and load with torch alone."""
    summary, scorer, _ = trained
    assert serve_main(["export", "--checkpoint", summary["checkpoint"], "--out", str(tmp_path)]) == 0
    prefill = torch.export.load(tmp_path / "prefill.pt2").module()
    score = torch.export.load(tmp_path / "score.pt2").module()
    ids, expected = raw_requests(scorer, Path(scorer.cfg.data.root), lengths=[0, 5, 64, 30], candidates=3)
    state = prefill(ids["sequence"], ids["lengths"], ids["time_diff"], ids["user"], ids["dense"])
    torch.testing.assert_close(score(ids["candidates"], *state), expected, atol=1e-5, rtol=0)


def test_batch_cli_names_the_bad_column(trained, tmp_path, capsys):
    summary, _, test = trained
    bad = test.slice(0, 5).drop_columns(["hist_action"])
    pq.write_table(bad, tmp_path / "bad.parquet")
    args = ["score", "--checkpoint", summary["checkpoint"], "--requests", str(tmp_path / "bad.parquet"),
            "--out", str(tmp_path / "o.parquet")]
    assert serve_main(args) == 2
    assert "hist_action" in capsys.readouterr().err


def test_a_nan_score_is_never_written(trained, tmp_path, capsys, monkeypatch):
    """A model that gives NaN (broken weights; the inputs are range-checked) stops the batch CLI with one line and
    exit 2, and no output file; the scorer raises instead of returning NaN."""
    from longer_train.errors import NonFiniteScores

    summary, scorer, test = trained
    broken = copy.copy(scorer)
    broken.dense = copy.deepcopy(scorer.dense)
    with torch.no_grad():
        next(broken.dense.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteScores, match="non-finite score"):
        broken.score_table(test.slice(0, 5))
    monkeypatch.setattr(Scorer, "from_checkpoint", classmethod(lambda cls, path, cache=None: broken))
    pq.write_table(test.slice(0, 5), tmp_path / "requests.parquet")
    out = tmp_path / "scores.parquet"
    capsys.readouterr()
    assert serve_main(["score", "--checkpoint", summary["checkpoint"], "--requests",
                       str(tmp_path / "requests.parquet"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("longer-serve")] and "Traceback" not in err
    assert not out.exists()


def test_scoring_maps_ids_beyond_the_vocabulary_as_training_does(trained):
    _, scorer, test = trained
    size = scorer.cfg.data.tables["item"].num_embeddings
    rows = test.slice(0, 4)
    ids = rows["item_id"].to_numpy()
    hist = rows["hist_item_id"].to_pylist()
    beyond = rows.set_column(rows.schema.get_field_index("item_id"), "item_id", pa.array(ids + size))
    beyond = beyond.set_column(beyond.schema.get_field_index("hist_item_id"), "hist_item_id",
                               pa.array([[i + 3 * size for i in h] for h in hist], pa.list_(pa.int64())))
    with pytest.raises(SchemaError, match="item_id"):  # the trained config's policy is error
        scorer.score_table(beyond)
    cfg = copy.deepcopy(scorer.cfg)
    cfg.data.tables["item"].oov = "hash"
    lookup = copy.deepcopy(scorer.lookup)
    lookup.policy = {name: cfg.data.tables[lookup.table_of[name]] for name in lookup.policy}
    hashed = Scorer(cfg, lookup, scorer.dense)
    np.testing.assert_allclose(hashed.score_table(beyond), scorer.score_table(rows), atol=1e-6)


def test_requests_scored_together_equal_requests_scored_alone(trained):
    """score_requests keys requests by position, not by (user, time): two requests of the same user at the
    same time with different histories are two requests; a batch of them (ragged histories and candidate
    counts, padded together) scores each as the batch scorer does, within fp32 noise."""
    _, scorer, test = trained
    data = scorer.cfg.data
    cand_cols = data.columns("candidate")
    users, candidates, counts, expected = [], [], [], []
    for i, (row, n) in enumerate([(0, 3), (5, 1), (9, 7), (5, 4)]):
        user = test.slice(row, 1)
        if i == 3:  # the user and time of request 1, half its history
            hist = {c: pa.array([user[c][0].as_py()[: len(user[c][0]) // 2]], user.schema.field(c).type)
                    for c in [*data.columns("sequence"), data.hist_timestamp]}
            for name, column in hist.items():
                user = user.set_column(user.schema.get_field_index(name), name, column)
        cands = test.slice(20 + 3 * (1 if i == 3 else i), n).select(cand_cols)  # 3 starts with 1's candidate
        rows = pa.concat_tables([user.drop_columns(cand_cols + ["label"])] * n)
        for name in cand_cols:
            rows = rows.append_column(name, cands[name])
        expected.append(scorer.score_table(rows))
        users.append(user.drop_columns(["label"]))
        candidates.append(cands)
        counts.append(n)
    together = scorer.score_requests(pa.concat_tables(users), pa.concat_tables(candidates), np.array(counts))
    np.testing.assert_allclose(together, np.concatenate(expected), atol=1e-5, rtol=0)
    assert abs(expected[1][0] - expected[3][0]) > 1e-4  # same candidate, user and time: the history matters
