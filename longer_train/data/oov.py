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


def map_ids(ids, table: TableConfig):
    """Raw ids (already validated: none unmappable) -> embedding rows: a numpy array (int64) or a torch tensor
    (serving's exported lookups map ids with this too). Mapping twice gives the same rows."""
    if isinstance(ids, np.ndarray):
        ids = ids.astype(np.int64, copy=False)
    if table.oov == "hash":  # ids are not negative: id mod num_embeddings is the id itself below num_embeddings
        return ids % table.num_embeddings
    if table.oov == "oov_row":
        return ids.clip(max=table.num_embeddings)
    return ids
