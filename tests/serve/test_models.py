"""Every Table 1 model is served: `longer-serve score` on its checkpoint and the HTTP service give the training
forward's probabilities (within 1e-5), through the models' scoring interface only."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from serve_models import TABLE1, make_scorer, requests, training_probabilities, with_candidates
from test_config import CONFIGS
from test_http import _http, _post

from longer_train.config import load_config
from longer_train.data.store import read_inline
from longer_train.distributed.process_group import destroy_distributed
from longer_train.serve.cli import main as serve_main
from longer_train.serve.http import HttpServer
from longer_train.serve.limits import ServeLimits
from longer_train.serve.scorer import Scorer
from longer_train.trainer import Trainer

LENGTHS = [0, 3, 64, 17, 40]


def _rows(scorer: Scorer, root, candidates: int) -> pa.Table:
    """Every (user, candidate) row of LENGTHS' users and `candidates` test candidates each, user-major."""
    data = scorer.cfg.data
    users = requests(scorer, root, LENGTHS)
    pool = read_inline(root, "test", data).select(data.columns("candidate")).slice(0, candidates)
    repeated = users.take(np.repeat(np.arange(users.num_rows), candidates))
    return with_candidates(repeated, pool.take(np.tile(np.arange(candidates), users.num_rows)))


@pytest.mark.parametrize("name", TABLE1)
def test_batch_scores_equal_the_training_forward(name, synthetic_root):
    scorer = make_scorer(name, synthetic_root)
    rows = _rows(scorer, synthetic_root, 4)
    np.testing.assert_allclose(scorer.score_table(rows), training_probabilities(scorer, rows).numpy(), atol=1e-5)


@pytest.mark.parametrize("name", TABLE1)
def test_http_scores_equal_the_training_forward(name, synthetic_root):
    scorer = make_scorer(name, synthetic_root)
    rows = _rows(scorer, synthetic_root, 3)
    expected = training_probabilities(scorer, rows).numpy()
    candidates = scorer.cfg.data.columns("candidate")
    server = HttpServer(scorer, "127.0.0.1", 0, ServeLimits()).start()
    try:
        for u in range(len(LENGTHS)):
            user_rows = rows.slice(3 * u, 3).to_pylist()
            user = {k: v for k, v in user_rows[0].items() if k not in candidates}
            body = json.dumps({"user": user, "candidates": [{c: r[c] for c in candidates} for r in user_rows]})
            status, _, answer = _http(server.port, _post(server.port, body.encode()))
            assert status == 200, answer
            np.testing.assert_allclose(json.loads(answer)["scores"], expected[3 * u : 3 * u + 3], atol=1e-5)
    finally:
        server.stop()


@pytest.mark.parametrize("name, extra", [*((name, ()) for name in TABLE1), ("longer", ("model.stream_tokens=true",))])
def test_score_cli_serves_a_checkpoint_of_every_model(name, extra, synthetic_root, tmp_path):
    """A two-step run of each experiment config (and of LONGER with the stream tokens), scored by `longer-serve
    score` as its final forward scores."""
    overrides = [f"data.root={synthetic_root}", "data.batch_size=32", "train.max_steps=2", "data.num_workers=0",
                 f"train.output_dir={tmp_path}/runs", f"train.runs_table={tmp_path}/runs.jsonl",
                 "train.run_name=serve", "train.progress_bar=false", "logging.wandb_mode=disabled",
                 "train.eval_every=0", *extra]
    if name != "din_recent50":
        overrides.append("data.max_len=64")
    cfg = load_config([CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / f"{name}.yaml"], overrides)
    try:
        summary = Trainer(cfg).train()
    finally:
        destroy_distributed()
    scorer = Scorer.from_checkpoint(summary["checkpoint"])
    rows = _rows(scorer, synthetic_root, 2)
    pq.write_table(rows, tmp_path / "requests.parquet")
    out = tmp_path / "scores.parquet"
    args = ["score", "--checkpoint", summary["checkpoint"], "--requests", str(tmp_path / "requests.parquet"),
            "--out", str(out)]
    assert serve_main(args) == 0
    with torch.no_grad():
        expected = training_probabilities(scorer, rows).numpy()
    np.testing.assert_allclose(pq.read_table(out)["score"].to_numpy(), expected, atol=1e-5)
