"""TorchRec embedding tables built from the feature config, and the lookup that turns KeyedJaggedTensors
into the plain embedding tensors the dense model takes.

- candidate + sequence features -> one `EmbeddingCollection` (per-id lookups). A table named by several
  features is one shared table (e.g. `item` for `item_id` and `hist_item_id`).
- user features -> one `EmbeddingBagCollection` (sum pooling: a user/context feature may be multi-valued).
Tables are created on the `meta` device; `DistributedModelParallel` materialises them sharded.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
)

from ..config import DataConfig
from ..data.oov import embedding_rows
from .candidate_match import MatchPair


class FeatureLayout:
    """Feature names by role, in config order, and the widths they produce."""

    def __init__(self, data: DataConfig) -> None:
        self.candidate = data.columns("candidate")
        self.sequence = data.columns("sequence")
        self.user = data.columns("user")
        self.dense = data.columns("dense")
        table_of = {f.name: f.table for f in data.features}
        dim = lambda name: data.tables[table_of[name]].embedding_dim
        self.event_dim = sum(dim(n) for n in self.sequence)
        self.candidate_dim = sum(dim(n) for n in self.candidate)
        self.user_dim = sum(dim(n) for n in self.user)
        # candidate features whose table a sequence feature also looks up: the same id gives the same vector
        event_offset = dict(zip(self.sequence, itertools.accumulate([0] + [dim(n) for n in self.sequence])))
        by_table = {}
        for name in self.sequence:
            by_table.setdefault(table_of[name], name)
        pairs, offset = [], 0
        for name in self.candidate:
            if table_of[name] in by_table:
                pairs.append(MatchPair(offset, event_offset[by_table[table_of[name]]], dim(name)))
            offset += dim(name)
        self.match_pairs = tuple(pairs)


def _table_configs(config_cls: type, data: DataConfig, roles: tuple[str, ...]) -> list:
    """One TorchRec table config per table used by features of these roles, listing those features."""
    features: dict[str, list[str]] = {}
    for feat in data.features:
        if feat.role in roles:
            features.setdefault(feat.table, []).append(feat.name)
    return [
        config_cls(
            name=name, num_embeddings=embedding_rows(data.tables[name]),
            embedding_dim=data.tables[name].embedding_dim, feature_names=names,
        )
        for name, names in features.items()
    ]


class SparseArch(nn.Module):
    """KJT inputs -> (events [N, D_event] packed histories, lengths [B], candidate [B, D_c], user [B, D_u])."""

    def __init__(self, data: DataConfig, device: torch.device | None = None) -> None:
        super().__init__()
        device = device or torch.device("meta")
        self.layout = FeatureLayout(data)
        per_id = _table_configs(EmbeddingConfig, data, ("candidate", "sequence"))
        self.per_id = EmbeddingCollection(tables=per_id, device=device)
        pooled = _table_configs(EmbeddingBagConfig, data, ("user",))
        self.pooled = EmbeddingBagCollection(tables=pooled, device=device) if pooled else None

    def forward(
        self, per_id: KeyedJaggedTensor, pooled: KeyedJaggedTensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        layout = self.layout
        out = self.per_id(per_id)  # feature -> JaggedTensor
        events = torch.cat([out[name].values() for name in layout.sequence], dim=-1)  # [N, D_event]
        lengths = out[layout.sequence[0]].lengths()
        candidate = torch.cat([out[name].values() for name in layout.candidate], dim=-1)  # one id per row
        if self.pooled is not None and pooled is not None:
            user = self.pooled(pooled).values()  # [B, D_user]
        else:
            user = candidate.new_zeros((candidate.shape[0], 0))
        return events, lengths, candidate, user
