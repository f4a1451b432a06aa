"""Out-of-vocabulary ids: the one mapping of raw ids to embedding rows, used by the loader (`collate`),
validation (which ids are bad rows) and serving, so training and scoring can never disagree.

Per table (`data.tables.<name>.oov`):
- error:   ids must be in 0 .. num_embeddings-1; anything else is a bad row (see `data.bad_rows`)
- hash:    an id >= num_embeddings is looked up at id mod num_embeddings
- oov_row: the table has one extra row, index num_embeddings, shared by every id >= num_embeddings
Negative ids are bad rows under every policy (an id is never negative by construction; a negative one
is a bug upstream, not an unseen value).
"""

from __future__ import annotations

import numpy as np

from ..config import TableConfig


def embedding_rows(table: TableConfig) -> int:
    """Rows of the embedding table: num_embeddings, plus the shared OOV row under `oov_row`."""
    return table.num_embeddings + (1 if table.oov == "oov_row" else 0)


def unmappable(ids: np.ndarray, table: TableConfig) -> np.ndarray:
    """bool per id: the policy has no row for it (negative, or beyond the vocabulary under `error`)."""
    if table.oov == "error":
        return (ids < 0) | (ids >= table.num_embeddings)
    return ids < 0


def map_ids(ids: np.ndarray, table: TableConfig) -> np.ndarray:
    """Raw ids (already validated: none unmappable) -> embedding rows, int64."""
    ids = ids.astype(np.int64, copy=False)
    beyond = ids >= table.num_embeddings
    if table.oov == "error" or not beyond.any():
        return ids
    if table.oov == "hash":
        return np.where(beyond, ids % table.num_embeddings, ids)
    return np.where(beyond, table.num_embeddings, ids)
