"""Scorers of every Table 1 model (their experiment configs over the synthetic data, initialised, not trained:
exactness does not need training) and requests for them as raw ids, with the training forward's probabilities."""

import numpy as np
import pyarrow as pa
import torch
from test_config import CONFIGS

from longer_train.config import load_config
from longer_train.data.batch import collate
from longer_train.data.store import read_inline
from longer_train.data.vocab import resolve_num_embeddings
from longer_train.models.ranking import RankingModel, build_dense
from longer_train.models.sparse_arch import SparseArch
from longer_train.serve.lookup import EmbeddingLookup, padded_ids
from longer_train.serve.scorer import Scorer, candidate_ids

# the paper's Table 1, by experiment config (configs/experiments/<name>.yaml); DIN (Recent50) keeps its max_len 50
TABLE1 = ["longer", "transformer", "hstu", "din", "din_recent50", "twin", "sum_pooling", "no_sequence"]


def make_scorer(name: str, root, overrides: tuple[str, ...] = ()) -> Scorer:
    """A scorer of experiment `name` over the synthetic data at `root` (max_len 64 unless the config sets less),
    with its parameters moved off their initial values (zero biases would hide what padding could leak);
    `overrides`: more config overrides."""
    overrides = [f"data.root={root}", "data.num_workers=0", "model.dropout=0.0", *overrides]
    if name != "din_recent50":
        overrides.append("data.max_len=64")
    cfg = load_config([CONFIGS / "datasets" / "synthetic.yaml", CONFIGS / "experiments" / f"{name}.yaml"], overrides)
    resolve_num_embeddings(cfg.data)
    torch.manual_seed(0)
    sparse = SparseArch(cfg.data, device=torch.device("cpu"))
    dense = build_dense(cfg, sparse)
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return Scorer(cfg, EmbeddingLookup.from_sparse(sparse, cfg.data), dense)


def requests(scorer: Scorer, root, lengths: list[int]) -> pa.Table:
    """Test rows of the store at `root`, one per entry of `lengths`, their histories cut to that many newest events."""
    data = scorer.cfg.data
    table = read_inline(root, "test", data).drop_columns([data.label])
    rows = table.take(np.argsort(-pa.compute.list_value_length(table[data.hist_timestamp]).to_numpy())[: len(lengths)])
    for name in [*data.columns("sequence"), data.hist_timestamp]:
        column = [h[len(h) - n:] if n else [] for h, n in zip(rows[name].to_pylist(), lengths)]
        rows = rows.set_column(rows.schema.get_field_index(name), name, pa.array(column, rows.schema.field(name).type))
    return rows


def with_candidates(users: pa.Table, candidates: pa.Table) -> pa.Table:
    """`users` with the candidate columns of `candidates` (same number of rows)."""
    for name in candidates.column_names:
        users = users.set_column(users.schema.get_field_index(name), name, candidates[name])
    return users


def training_probabilities(scorer: Scorer, rows: pa.Table) -> torch.Tensor:
    """The training forward (RankingModel over the TorchRec lookups) of every row -> probabilities [rows]."""
    sparse = SparseArch(scorer.cfg.data, device=torch.device("cpu"))
    sparse.load_state_dict({k.replace("per_id_", "per_id.embeddings.").replace("pooled_", "pooled.embedding_bags.")
                            + ".weight": v for k, v in scorer.lookup.state_dict().items()})
    batch = collate(rows.append_column("label", pa.array(np.zeros(rows.num_rows, np.float32))), scorer.cfg.data)
    with torch.no_grad():
        return torch.sigmoid(RankingModel(sparse, scorer.dense)(batch)[1][1])


def raw_requests(scorer: Scorer, root, lengths: list[int], candidates: int) -> tuple[dict, torch.Tensor]:
    """Requests of these history lengths with `candidates` candidates each, as the exported programs take them
    (export.py), and the training forward's probability of every (user, candidate) [U, C]."""
    data = scorer.cfg.data
    users = requests(scorer, root, lengths)
    pool = read_inline(root, "test", data).select(data.columns("candidate")).slice(0, users.num_rows * candidates)
    batch = collate(users.append_column("label", pa.array(np.zeros(users.num_rows, np.float32))), data)
    per_id, pooled = batch.per_id, batch.pooled
    names = scorer.lookup.user
    ids = dict(
        sequence=torch.stack([per_id[n].values() for n in scorer.lookup.sequence], dim=1),
        lengths=per_id[scorer.lookup.sequence[0]].lengths().long(), time_diff=batch.time_diff,
        user=padded_ids([pooled[n].values() for n in names], [pooled[n].lengths() for n in names]), dense=batch.dense,
        candidates=candidate_ids(pool, scorer.lookup.candidate).view(users.num_rows, candidates, -1),
    )
    expected = torch.stack([
        training_probabilities(scorer, with_candidates(users, pool.take(np.arange(users.num_rows) * candidates + c)))
        for c in range(candidates)
    ], dim=1)
    return ids, expected
