"""The embedding lookups of serving: `SparseArch`'s tables (gathered from a checkpoint) on plain tensors of ids,
with torch alone, so that the same module runs in the scorer and inside an exported program (export.py).

Ids are mapped to rows by each table's OOV policy (`data/oov.py`, as in training: mapping ids that are already
mapped changes nothing). Per-id features (candidate and sequence features) are looked up id by id, user features
sum-pooled over their ids, each role's features concatenated in the order the training lookup uses
(`SparseArch`: the dense model's input widths depend on it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DataConfig
from ..data.oov import map_ids
from ..models.sparse_arch import SparseArch


class EmbeddingLookup(nn.Module):
    def __init__(self, data: DataConfig, per_id: dict[str, Tensor], pooled: dict[str, Tensor],
                 user_features: list[str]) -> None:
        """`per_id` / `pooled`: table name -> weights [rows, dim] of the per-id and the sum-pooled tables;
        `user_features`: the user features in the pooled lookup's output order."""
        super().__init__()
        table_of = {f.name: f.table for f in data.features if f.table is not None}
        self.candidate = data.columns("candidate")
        self.sequence = data.columns("sequence")
        self.user = list(user_features)
        self.policy = {name: data.tables[table_of[name]] for name in (*self.candidate, *self.sequence, *self.user)}
        self.table_of = table_of
        for name, weight in per_id.items():
            self.register_buffer(f"per_id_{name}", weight.detach())
        for name, weight in pooled.items():
            self.register_buffer(f"pooled_{name}", weight.detach())

    @classmethod
    def from_sparse(cls, sparse: SparseArch, data: DataConfig) -> "EmbeddingLookup":
        per_id = {name: module.weight for name, module in sparse.per_id.embeddings.items()}
        pooled, user = {}, []
        if sparse.pooled is not None:
            pooled = {name: module.weight for name, module in sparse.pooled.embedding_bags.items()}
            user = [f for config in sparse.pooled.embedding_bag_configs() for f in config.feature_names]
        return cls(data, per_id, pooled, user)

    def _lookup(self, name: str, ids: Tensor) -> Tensor:
        """Feature `name`'s embeddings of raw ids [...] -> [..., dim]."""
        return F.embedding(map_ids(ids.long(), self.policy[name]), getattr(self, f"per_id_{self.table_of[name]}"))

    def events(self, ids: Tensor) -> Tensor:
        """Packed histories: ids [N, S] (a column per sequence feature) -> [N, D_event]."""
        return torch.cat([self._lookup(name, ids[:, i]) for i, name in enumerate(self.sequence)], dim=-1)

    def candidates(self, ids: Tensor) -> Tensor:
        """Ids [..., F_cand] (the candidate features, config order) -> [..., D_cand]."""
        return torch.cat([self._lookup(name, ids[..., i]) for i, name in enumerate(self.candidate)], dim=-1)

    def users(self, ids: Tensor) -> Tensor:
        """User features' ids [U, F_user, P], each row's ids then -1 padding -> their sum per feature, concatenated
        [U, D_user] (the sum pooling of training)."""
        pooled = []
        for i, name in enumerate(self.user):
            feature = ids[:, i]  # [U, P]
            present = (feature >= 0).unsqueeze(-1)
            rows = map_ids(feature.clamp(min=0).long(), self.policy[name])
            vectors = F.embedding(rows, getattr(self, f"pooled_{self.table_of[name]}"))  # [U, P, dim]
            pooled.append(torch.where(present, vectors, 0.0).sum(1))
        return torch.cat(pooled, dim=-1) if pooled else ids.new_zeros((ids.shape[0], 0), dtype=torch.float32)


def padded_ids(values: list[Tensor], lengths: list[Tensor]) -> Tensor:
    """Jagged ids of F features (per feature: values, and lengths [U] per row) -> [U, F, P] padded with -1, P the
    longest row (at least 1): the layout `EmbeddingLookup.users` takes."""
    rows = lengths[0].shape[0] if lengths else 0
    longest = max([1, *(int(n.max()) for n in lengths if n.numel())])
    out = torch.full((rows, len(values), longest), -1, dtype=torch.long)
    for f, (ids, count) in enumerate(zip(values, lengths)):
        count = count.long()
        row = torch.repeat_interleave(torch.arange(rows), count)
        slot = torch.arange(ids.shape[0]) - (torch.cumsum(count, 0) - count)[row]
        out[row, f, slot] = ids.long()
    return out
