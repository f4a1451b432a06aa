"""A single-process scorer built from a training checkpoint.

The embedding tables (gathered from however many ranks wrote them: torch.distributed.checkpoint
reshards on load) and the dense network are loaded into plain, unsharded modules. Requests are rows of
the sample schema without a label — one row per (request, candidate); rows with the same user and
request time share a history, which is looked up and encoded once (`prefill`) for all their candidates.
`score_requests` takes requests already split into their user side (one row each) and their candidates:
the HTTP service scores the requests that arrive together in one call of it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.distributed.checkpoint.api import CheckpointException
from torchrec import KeyedJaggedTensor

from ..components.checkpoint import (
    CheckpointError,
    describe_failure,
    find_checkpoint,
    load_checkpoint,
    read_meta,
)
from ..config import Config, ConfigError, config_from_dict
from ..data.batch import collate
from ..data.oov import map_ids
from ..data.schema import validate_batch
from ..errors import one_line
from ..models.inputs import DenseInputs
from ..models.longer import Longer
from ..models.ranking import dense_dims
from ..models.sparse_arch import SparseArch
from .kv_cache import prefill, score


class Scorer:
    def __init__(self, cfg: Config, sparse: SparseArch, dense: Longer) -> None:
        self.cfg, self.sparse, self.dense = cfg, sparse.eval(), dense.eval()
        self._lock = threading.Lock()  # one call at a time through the model (HTTP batches requests into one)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "Scorer":
        """A checkpoint folder, verified against its manifest, or the newest verified checkpoint of a run
        folder (`find_checkpoint`); CheckpointError when it cannot be used."""
        path = find_checkpoint(path)
        try:
            cfg = config_from_dict(read_meta(path)["config"])
        except (KeyError, TypeError, ConfigError) as err:
            raise CheckpointError(f"{path}: meta.json holds no usable config ({one_line(err)})") from None
        if cfg.model.name != "longer":
            raise CheckpointError(f"{path}: KV-cached serving is for model.name=longer, not {cfg.model.name!r}")
        sparse = SparseArch(cfg.data, device=torch.device("cpu"))
        dense = Longer(cfg.model, dense_dims(cfg, sparse))
        model = torch.nn.ModuleDict({"sparse": sparse, "dense": dense})
        state = {"model": model.state_dict()}
        try:
            load_checkpoint(path, state, verify=False)  # in place into the module's tensors; verified above
        except (Exception, CheckpointException) as err:  # noqa: B036 -- DCP's is a BaseException
            raise CheckpointError(f"{path}: cannot be loaded ({describe_failure(err)})") from None
        model.load_state_dict(state["model"])
        return cls(cfg, sparse, dense)

    @torch.no_grad()
    def score_table(self, table: pa.Table, source: str = "request") -> np.ndarray:
        """Click probability of every row of `table` (sample schema, label optional). Ids beyond a table's
        vocabulary follow its `oov` policy (`data/oov.py`, as in training); under `error` they raise."""
        data = self.cfg.data
        labelled = data.label in table.column_names
        for batch in table.to_batches():
            validate_batch(batch, data, source, labelled=labelled)
        if table.num_rows == 0:
            return np.zeros(0, dtype=np.float32)
        users = table.column(data.user_id).to_numpy()
        times = table.column(data.timestamp).to_numpy()
        keys, first, group = np.unique(np.stack([users, times], 1), axis=0, return_index=True, return_inverse=True)
        order = np.argsort(group.reshape(-1), kind="stable")  # rows grouped by request
        counts = np.bincount(group.reshape(-1), minlength=len(keys))
        candidates = table.select(data.columns("candidate")).take(order)
        scores = np.empty(table.num_rows, dtype=np.float32)
        scores[order] = self.score_requests(table.take(first), candidates, counts)
        return scores

    @torch.no_grad()
    def score_requests(self, users: pa.Table, candidates: pa.Table, counts: np.ndarray) -> np.ndarray:
        """Probabilities of `candidates` (rows grouped by request: counts[i] rows for request i), each
        against its request's row of `users` (validated; one row per request, the history stored once).
        Each history is looked up and encoded once (`prefill`) for all its request's candidates."""
        counts = np.asarray(counts, dtype=np.int64)
        request = np.repeat(np.arange(len(counts)), counts)
        position = np.arange(len(request)) - np.repeat(np.cumsum(counts) - counts, counts)  # slot in request
        with self._lock:
            user_batch = collate(users, self.cfg.data)
            events, lengths, _, user = self.sparse(user_batch.per_id, user_batch.pooled)
            inputs = DenseInputs(events, lengths, user_batch.time_diff, user.new_zeros((len(counts), 0)), user,
                                  user_batch.dense)
            cache = prefill(self.dense, inputs)
            embedded = self._candidate_embeddings(candidates)  # [rows, D_cand]
            grouped = embedded.new_zeros((len(counts), int(counts.max()), embedded.shape[1]))
            grouped[request, position] = embedded
            logits = score(self.dense, cache, grouped)[request, position]
        return torch.sigmoid(logits).numpy()

    def _candidate_embeddings(self, table: pa.Table) -> torch.Tensor:
        """Candidate feature embeddings of every row; sequence features are passed empty (not looked up)."""
        layout, rows, data = self.sparse.layout, table.num_rows, self.cfg.data
        table_of = {f.name: data.tables[f.table] for f in data.features if f.table is not None}
        values = [torch.from_numpy(map_ids(table.column(n).to_numpy(), table_of[n]).copy()) for n in layout.candidate]
        lengths = [torch.ones(rows, dtype=torch.int32)] * len(layout.candidate)
        lengths += [torch.zeros(rows, dtype=torch.int32)] * len(layout.sequence)
        kjt = KeyedJaggedTensor(
            keys=layout.candidate + layout.sequence, values=torch.cat(values), lengths=torch.cat(lengths)
        )
        out = self.sparse.per_id(kjt)
        return torch.cat([out[name].values() for name in layout.candidate], dim=-1)
