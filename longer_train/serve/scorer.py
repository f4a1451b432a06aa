"""A single-process scorer built from a training checkpoint, for every model of the paper's Table 1.

The embedding tables (gathered from however many ranks wrote them: torch.distributed.checkpoint
reshards on load) become plain tensors (`EmbeddingLookup`) and the dense network a plain module, read only
through its scoring interface (models/user_state.py: `prefill`, `score`). Requests are rows of the sample schema
without a label — one row per (request, candidate); rows with the same user and request time share a history,
which is looked up and encoded once (`prefill`) for all their candidates. `score_requests` takes requests
already split into their user side (one row each) and their candidates: the HTTP service scores the requests
that arrive together in one call of it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.distributed.checkpoint.api import CheckpointException

from ..components.checkpoint import (
    CheckpointError,
    describe_failure,
    find_checkpoint,
    load_checkpoint,
    read_meta,
)
from ..config import Config, ConfigError, config_from_dict
from ..data.batch import Batch, collate
from ..data.schema import validate_batch
from ..errors import NonFiniteScores, one_line
from ..models.inputs import DenseInputs
from ..models.ranking import build_dense
from ..models.sparse_arch import SparseArch
from ..models.user_state import ServableModel, UserState, split_users, stack_users
from .lookup import EmbeddingLookup, padded_ids
from .user_cache import UserStateCache, cut_history, user_keys


class Scorer:
    def __init__(
        self, cfg: Config, lookup: EmbeddingLookup, dense: ServableModel, cache: UserStateCache | None = None
    ) -> None:
        """`cache`: keeps encoded users between calls of `score_requests` (user_cache.py); None: none kept."""
        self.cfg, self.lookup, self.dense, self.cache = cfg, lookup.eval(), dense.eval(), cache
        data = cfg.data
        self.user_columns = list(dict.fromkeys([  # a request's user side
            data.user_id, data.timestamp, data.hist_timestamp, *data.columns("sequence"), *data.columns("user"),
            *data.columns("dense"),
        ]))
        self.history_columns = {data.hist_timestamp, *data.columns("sequence")}  # a list of events per row
        self.appends = dense.serving.appends
        # what a user's state depends on: its cache key (a model that appends does not read the request time)
        self.key_columns = [c for c in self.user_columns if not (self.appends and c == data.timestamp)]
        self._lock = threading.Lock()  # one call at a time through the model (HTTP batches requests into one)

    @classmethod
    def from_checkpoint(cls, path: str | Path, cache: UserStateCache | None = None) -> "Scorer":
        """A checkpoint folder, verified against its manifest, or the newest verified checkpoint of a run
        folder (`find_checkpoint`); CheckpointError when it cannot be used."""
        path = find_checkpoint(path)
        try:
            cfg = config_from_dict(read_meta(path)["config"])
        except (KeyError, TypeError, ConfigError) as err:
            raise CheckpointError(f"{path}: meta.json holds no usable config ({one_line(err)})") from None
        sparse = SparseArch(cfg.data, device=torch.device("cpu"))
        dense = build_dense(cfg, sparse)
        model = torch.nn.ModuleDict({"sparse": sparse, "dense": dense})
        state = {"model": model.state_dict()}
        try:
            load_checkpoint(path, state, verify=False)  # in place into the module's tensors; verified above
        except (Exception, CheckpointException) as err:  # noqa: B036 -- DCP's is a BaseException
            raise CheckpointError(f"{path}: cannot be loaded ({describe_failure(err)})") from None
        model.load_state_dict(state["model"])
        return cls(cfg, EmbeddingLookup.from_sparse(sparse, cfg.data), dense, cache)

    @property
    def dense_width(self) -> int:
        """How many dense features a request carries (one column each)."""
        return len(self.cfg.data.columns("dense"))

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
        Each history is looked up and encoded once (`prefill`) for all its request's candidates, or taken from
        the cache when the same user side was encoded before."""
        counts = np.asarray(counts, dtype=np.int64)
        request = np.repeat(np.arange(len(counts)), counts)
        position = np.arange(len(request)) - np.repeat(np.cumsum(counts) - counts, counts)  # slot in request
        with self._lock:
            state = self.prefill(users) if self.cache is None else self._warm_prefill(users)
            embedded = self.lookup.candidates(candidate_ids(candidates, self.lookup.candidate))  # [rows, D_cand]
            grouped = embedded.new_zeros((len(counts), int(counts.max()), embedded.shape[1]))
            grouped[request, position] = embedded
            logits = self.dense.score(state, grouped)[request, position]
        bad = ~torch.isfinite(logits)
        if bad.any():  # never a NaN score: the inputs are range-checked, so the model itself is broken
            raise NonFiniteScores(
                f"the model gave {int(bad.sum())} non-finite score(s) (NaN or infinite logits) of {len(logits)}, "
                f"first for request {int(request[int(bad.nonzero()[0])])} of this call: the checkpoint's weights "
                "are not finite or its activations overflow; nothing was scored. Score with an earlier checkpoint "
                "(longer-serve --checkpoint runs/<run>/checkpoints/step_N)"
            )
        return torch.sigmoid(logits).numpy()

    def prefill(self, users: pa.Table) -> UserState:
        """The dense model's state of each row of `users` (validated): its newest `data.max_len` events."""
        return self.dense.prefill(self.dense_inputs(collate(users, self.cfg.data)))

    def _warm_prefill(self, users: pa.Table) -> UserState:
        """The users' states: kept ones (hits), kept ones extended by the request's newer events (appends, for a
        model that appends), the others encoded together (misses); the new ones kept."""
        data = self.cfg.data
        table = users.select(self.key_columns)
        keys = user_keys(table, data.user_id, data.hist_timestamp)
        states = [self.cache.get(key, count=False) for key in keys]
        self.cache.record("hits", sum(s is not None for s in states))
        for i in [i for i, s in enumerate(states) if s is None and self.appends]:
            states[i] = self._append(users.slice(i, 1), table.slice(i, 1), keys[i])
            if states[i] is not None:
                self.cache.put(keys[i], states[i])
                self.cache.record("appends")
        missing = [i for i, s in enumerate(states) if s is None]
        if missing:
            self.cache.record("misses", len(missing))
            for i, state in zip(missing, split_users(self.prefill(users.take(missing)))):
                self.cache.put(keys[i], state)
                states[i] = state
        return stack_users(states)

    def _append(self, user: pa.Table, keyed: pa.Table, key: tuple[int, int, str]) -> UserState | None:
        """One user's state from its kept state of an older request whose history the request's starts with
        (the newer events encoded only: `AppendableModel.append`); None when there is none, or the history is
        longer than data.max_len (the window of kept events slides: every position moves)."""
        data = self.cfg.data
        found = self.cache.latest(key[0])
        if found is None or key[1] > data.max_len:
            return None
        (_, covered, _), state = found
        if covered >= key[1]:
            return None
        prefix = cut_history(keyed, self.history_columns, 0, covered)
        if user_keys(prefix, data.user_id, data.hist_timestamp)[0] != found[0]:
            return None
        newer = cut_history(user, self.history_columns, self.dense.append_start(covered))
        return self.dense.append(state, self.dense_inputs(collate(newer, data)), covered)

    def dense_inputs(self, batch: Batch) -> DenseInputs:
        """The user side of a collated batch as the dense model takes it (no candidate)."""
        per_id, pooled, lookup = batch.per_id, batch.pooled, self.lookup
        events = lookup.events(torch.stack([per_id[name].values() for name in lookup.sequence], dim=1))
        lengths = per_id[lookup.sequence[0]].lengths()
        names = lookup.user if pooled is not None else []
        user = lookup.users(padded_ids([pooled[n].values() for n in names], [pooled[n].lengths() for n in names]))
        return DenseInputs(events, lengths, batch.time_diff, events.new_zeros((len(lengths), 0)), user, batch.dense,
                           pad_to=batch.longest, host_lengths=batch.history_lengths)


def candidate_ids(table: pa.Table, names: list[str]) -> torch.Tensor:
    """The candidate features' raw ids of every row of `table` -> [rows, F_cand] int64."""
    return torch.from_numpy(np.stack([table.column(n).to_numpy().astype(np.int64) for n in names], axis=1))
