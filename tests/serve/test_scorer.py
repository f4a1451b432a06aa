"""Scoring from a training checkpoint: the scorer reproduces the trained model's test AUC, the batch CLI
writes scores, and the HTTP service answers good requests, rejects bad ones with 4xx, and stays correct
under concurrent requests."""

import copy
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_config import QUICKSTART

from longer_train.components.metrics import auc
from longer_train.config import load_config
from longer_train.data import synthetic
from longer_train.data.batch import collate
from longer_train.data.schema import SchemaError
from longer_train.data.store import read_inline
from longer_train.distributed.process_group import destroy_distributed
from longer_train.serve.cli import main as serve_main
from longer_train.serve.http import make_server
from longer_train.serve.scorer import Scorer
from longer_train.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    synthetic.generate(root / "data", users=300, max_len=64, seed=4)
    cfg = load_config(QUICKSTART, [
        f"data.root={root / 'data'}", "data.max_len=64", "data.batch_size=64", "train.max_steps=20",
        f"train.output_dir={root}/runs", f"train.runs_table={root}/runs.jsonl", "train.run_name=serve",
        "train.progress_bar=false", "logging.wandb_mode=disabled", "data.num_workers=0",
    ])
    try:
        summary = Trainer(cfg).train()
    finally:
        destroy_distributed()
    test = read_inline(root / "data", "test", cfg.data)  # requests carry their histories (inline schema)
    return summary, Scorer.from_checkpoint(summary["checkpoint"]), test


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


def test_export_cli_programs_reproduce_the_scorer(trained, tmp_path):
    summary, scorer, test = trained
    assert serve_main(["export", "--checkpoint", summary["checkpoint"], "--out", str(tmp_path)]) == 0
    prefill_program = torch.export.load(tmp_path / "prefill.pt2").module()
    score_program = torch.export.load(tmp_path / "score.pt2").module()
    rows = test.slice(0, 6)
    batch = collate(rows, scorer.cfg.data)
    with torch.no_grad():
        events, lengths, candidate, user = scorer.sparse(batch.per_id, batch.pooled)
    cache = prefill_program(events, lengths.long(), batch.time_diff, user, batch.dense)
    logits = score_program(candidate.unsqueeze(1), *cache)[:, 0]  # each row: its own candidate
    np.testing.assert_allclose(torch.sigmoid(logits).numpy(), scorer.score_table(rows), atol=1e-5)


def test_batch_cli_names_the_bad_column(trained, tmp_path, capsys):
    summary, _, test = trained
    bad = test.slice(0, 5).drop_columns(["hist_action"])
    pq.write_table(bad, tmp_path / "bad.parquet")
    args = ["score", "--checkpoint", summary["checkpoint"], "--requests", str(tmp_path / "bad.parquet"),
            "--out", str(tmp_path / "o.parquet")]
    assert serve_main(args) == 2
    assert "hist_action" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(trained):
    _, scorer, _ = trained
    srv = make_server(scorer, "127.0.0.1", 0, max_candidates=20)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _post(url: str, payload, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(url + "/score", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _request(test, row: int, n: int) -> tuple[dict, list[dict]]:
    record = test.slice(row, 1).to_pylist()[0]
    user = {k: v for k, v in record.items() if k not in ("item_id", "category_id", "label")}
    items = test["item_id"].to_pylist()[:n]
    cats = test["category_id"].to_pylist()[:n]
    return {"user": user, "candidates": [{"item_id": i, "category_id": c} for i, c in zip(items, cats)]}


def test_http_scores_match_the_batch_scorer(trained, server):
    _, scorer, test = trained
    with urllib.request.urlopen(server + "/health", timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read()) == {"status": "ok"}
    payload = _request(test, 3, 7)
    status, body = _post(server, payload)
    assert status == 200 and len(body["scores"]) == 7
    rows = test.slice(3, 1).to_pylist()[0]
    expected_rows = test.slice(0, 7).to_pylist()  # the 7 candidates, each with row 3's user side
    for r in expected_rows:
        r.update({k: rows[k] for k in payload["user"]})
    expected = scorer.score_table(pa.Table.from_pylist(expected_rows, schema=test.schema))
    np.testing.assert_allclose(body["scores"], expected, atol=1e-6)


def test_http_rejects_bad_requests(trained, server):
    _, _, test = trained
    good = _request(test, 0, 3)
    assert _post(server, None, raw=b"{not json")[0] == 400
    no_hist = json.loads(json.dumps(good))
    del no_hist["user"]["hist_item_id"]
    status, body = _post(server, no_hist)
    assert status == 400 and "user.hist_item_id" in body["error"]
    out_of_range = json.loads(json.dumps(good))
    out_of_range["candidates"][1]["item_id"] = 10**9
    status, body = _post(server, out_of_range)
    assert status == 400 and "item_id" in body["error"] and "candidate 1" in body["error"]
    status, body = _post(server, _request(test, 0, 21))
    assert status == 413 and "at most 20" in body["error"]
    status, body = _post(server, {"user": good["user"], "candidates": []})
    assert status == 400


def test_http_is_correct_under_concurrent_requests(trained, server):
    _, _, test = trained
    payloads = [_request(test, i, 5) for i in range(8)]
    alone = [_post(server, p)[1]["scores"] for p in payloads]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: _post(server, p), payloads * 3))
    for i, (status, body) in enumerate(together):
        assert status == 200
        np.testing.assert_allclose(body["scores"], alone[i % 8], atol=1e-6)


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
    hashed = Scorer(cfg, scorer.sparse, scorer.dense)
    np.testing.assert_allclose(hashed.score_table(beyond), scorer.score_table(rows), atol=1e-6)
