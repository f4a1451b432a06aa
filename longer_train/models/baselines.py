"""Baselines of the LONGER paper's Table 1, on LONGER's inputs, behaviour tokens and head layout, so that a
comparison changes only how the history is used:

- `no_sequence` (the paper's Base): candidate, user and dense features only;
- `sum_pooling`: the sum of the behaviour tokens;
- `din`: target attention (DIN): each behaviour token weighted by an MLP over [token, candidate,
  token - candidate, token * candidate] and (`model.candidate_match`) the behaviour's similarity to the
  candidate in the shared embedding space, unnormalised, then summed. DIN over the recent 50 events is the
  same model with `data.max_len=50`.
With `model.candidate_match=attention_readout` the pooled vector also holds the pooled similarities (for DIN:
how much of the candidate's item / category the attention found in the history; models/candidate_match.py).
`model.pool_norm` normalises the weights of both within each row: `length` (divided by the row's length:
mean pooling) or `softmax` (over the row's events); the default `none` is the paper's baselines.
The Transformer baseline (full causal attention over the unmerged sequence, every position a query) is
LONGER itself with `model.merge_k=1` and `model.num_queries >= data.max_len`; TWIN (`twin.py`) is a pooled
sequence too, HSTU is `hstu.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .blocks import MLP
from .candidate_match import pair_similarity, unit_pairs
from .flops import mlp_flops
from .inputs import DenseDims, DenseInputs, event_rows
from .token_builder import TokenBuilder, token_flops
from .units import ComputeUnits


class NoSequence(nn.Module):
    def __init__(self, cfg: ModelConfig, dims: DenseDims) -> None:
        super().__init__()
        self.head_dims = [dims.candidate + dims.user + dims.dense, *cfg.head_hidden, 1]
        self.head = MLP(self.head_dims[0], list(cfg.head_hidden), 1)

    def forward(self, x: DenseInputs) -> Tensor:
        return self.head(torch.cat([x.candidate, x.user, x.dense], dim=-1)).squeeze(-1)

    def flops(self, lengths: list[int]) -> int:
        return len(lengths) * mlp_flops(self.head_dims)

    def compute_units(self) -> ComputeUnits:
        return ComputeUnits(head=[self.head])


class PooledSequence(nn.Module):
    """Behaviour tokens (as in LONGER) pooled into one vector per row, then the head. Subclasses say how:
    `weights` per event (SumPooling, DIN), or a whole `pool` (TWIN, models/twin.py)."""

    def __init__(self, cfg: ModelConfig, dims: DenseDims, readout_heads: int = 1) -> None:
        """`readout_heads`: match readouts per pair in the pooled vector (one per attention head)."""
        super().__init__()
        d = cfg.token_dim
        self.cfg, self.dims = cfg, dims
        self.tokens = TokenBuilder(dims.event, d, cfg.time_buckets, dims.max_len)
        self.candidate_token = MLP(dims.candidate, [d], d)
        self.match_pairs = dims.match_pairs if cfg.candidate_match != "none" else ()
        self.match_readout = len(self.match_pairs) if cfg.candidate_match == "attention_readout" else 0
        pooled = d + readout_heads * self.match_readout
        self.head_dims = [pooled + d + dims.candidate + dims.user + dims.dense, *cfg.head_hidden, 1]
        self.head = MLP(self.head_dims[0], list(cfg.head_hidden), 1)

    def weights(self, tokens: Tensor, candidate: Tensor, match: Tensor) -> Tensor:
        """Per-event pooling weights [N, 1]; `candidate` [N, d] is each event's row's candidate token, `match`
        [N, P] each event's similarity to its row's candidate (P = 0 without candidate match)."""
        raise NotImplementedError

    def forward(self, x: DenseInputs) -> Tensor:
        row, recency = event_rows(x.lengths, x.events.shape[0])
        tokens = self.tokens(x.events, x.time_diff, recency)  # [N, d], valid events only
        candidate = self.candidate_token(x.candidate)  # [B, d]
        match = tokens.new_zeros((x.events.shape[0], 0))
        if self.match_pairs:
            match = pair_similarity(unit_pairs(x.events, self.match_pairs, "event"),
                                    unit_pairs(x.candidate, self.match_pairs, "candidate")[row], self.match_pairs)
        pooled = self.pool(x.lengths.long(), row, tokens, candidate, match)
        return self.head(torch.cat([pooled, candidate, x.candidate, x.user, x.dense], dim=-1)).squeeze(-1)

    def pool(self, lengths: Tensor, row: Tensor, tokens: Tensor, candidate: Tensor, match: Tensor) -> Tensor:
        """The pooled vector [B, d (+ readout)] from the packed events' rows [N], behaviour tokens [N, d] and
        similarities to their row's candidate [N, P], and the candidate tokens [B, d]: here the per-event
        `weights`, normalised by `model.pool_norm`, sum tokens (and similarities, for the readout)."""
        b = lengths.shape[0]
        weights = self.weights(tokens, candidate[row], match)  # [N, 1]
        if self.cfg.pool_norm == "length":
            weights = weights / lengths.clamp(min=1)[row, None]
        elif self.cfg.pool_norm == "softmax":  # over each row's events; empty rows pool to zero
            top = weights.new_full((b, 1), float("-inf")).scatter_reduce(0, row[:, None], weights, "amax")
            weights = torch.exp(weights - top[row])
            weights = weights / weights.new_zeros((b, 1)).index_add(0, row, weights)[row]
        pooled_in = torch.cat([tokens, match[:, : self.match_readout]], dim=-1)  # [N, d (+ P)]
        return tokens.new_zeros((b, pooled_in.shape[1])).index_add(0, row, pooled_in * weights)  # [B, d (+ P)]

    def flops(self, lengths: list[int]) -> int:
        d = self.cfg.token_dim
        per_row = mlp_flops([self.dims.candidate, d, d]) + mlp_flops(self.head_dims)
        return token_flops(sum(lengths), self.dims.event, d, self.cfg.time_buckets) + len(lengths) * per_row

    def compute_units(self) -> ComputeUnits:
        """What the compute policies act on (models/units.py); a subclass adds its attention."""
        return ComputeUnits(tokens=[self.tokens, self.candidate_token], head=[self.head])


class SumPooling(PooledSequence):
    def weights(self, tokens: Tensor, candidate: Tensor, match: Tensor) -> Tensor:
        return tokens.new_ones((tokens.shape[0], 1))


class DIN(PooledSequence):
    def __init__(self, cfg: ModelConfig, dims: DenseDims) -> None:
        super().__init__(cfg, dims)
        self.attention_dims = [4 * cfg.token_dim + len(self.match_pairs), *cfg.din_hidden, 1]
        self.attention = MLP(self.attention_dims[0], list(cfg.din_hidden), 1)

    def weights(self, tokens: Tensor, candidate: Tensor, match: Tensor) -> Tensor:
        return self.attention(torch.cat([tokens, candidate, tokens - candidate, tokens * candidate, match], dim=-1))

    def flops(self, lengths: list[int]) -> int:
        return super().flops(lengths) + sum(lengths) * mlp_flops(self.attention_dims)

    def compute_units(self) -> ComputeUnits:
        units = super().compute_units()
        units.attention = [self.attention]  # the attention MLP: bf16 "attention"
        return units
