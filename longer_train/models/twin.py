"""TWIN, the two-stage interest network (Chang et al., KDD 2023, "TWIN: TWo-stage Interest Network for
Lifelong User Behavior Modeling in CTR Prediction at Kuaishou"), on the baselines' behaviour tokens and head.

- GSU (the paper's consistency-preserving general search unit): every history event is scored against the
  candidate with the ESU's own target-attention parameters — the same function, not a cheaper proxy —
  and each row keeps its `model.twin_top_k` highest-scoring events (all of them when it has fewer).
- ESU (exact search unit): multi-head target attention of the candidate over those k events.

Scores, per head h: (W^k_h t_j)·(W^q_h c) / √dh + Σ_p w_{h,p}·s_{j,p}, where t_j is behaviour j's token,
c the candidate token and s_{j,p} behaviour j's similarity to the candidate in the shared embedding space
(models/candidate_match.py, `model.candidate_match`): TWIN compresses its user-item cross features into
such per-head bias terms. The GSU ranks by the mean of the heads' scores. With `attention_readout` the
pooled vector also holds, per head and pair, the similarity the ESU attended to.

The selection is non-differentiable, as in the paper: the scores are computed once, the top-k passes only
indices, and the ESU attends with the selected events' own scores — so events outside the top-k get no
gradient at all (tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .baselines import PooledSequence
from .blocks import split_heads
from .candidate_match import attended_similarity, match_bias, match_weight
from .inputs import DenseDims
from .units import ComputeUnits


def top_k_per_row(scores: Tensor, lengths: Tensor, k: int, longest: int | None = None) -> tuple[Tensor, Tensor]:
    """Each row's k highest-scoring events.

    scores [N] of packed events (rows of `lengths` [B] one after another); returns their packed indices
    [B, k'] (highest first) and which are events [B, k'], k' = min(k, longest row): a row with fewer than k
    events keeps all of them and its remaining slots are not valid (index 0). Indices only: no gradient.
    `longest`: at least the longest row (more only adds slots that are not valid); None: read from `lengths`."""
    b = lengths.shape[0]
    if longest is None:
        longest = int(lengths.max()) if b else 0
    positions = torch.arange(longest, device=lengths.device)
    is_event = positions[None, :] < lengths[:, None]  # [B, L] right-padded
    index = torch.where(is_event, (torch.cumsum(lengths, 0) - lengths)[:, None] + positions[None, :], 0)
    padded = scores.detach()[index].masked_fill(~is_event, float("-inf"))  # [B, L]
    top = padded.topk(min(k, longest), dim=1)
    return index.gather(1, top.indices), top.indices < lengths[:, None]


class TwinAttention(nn.Module):
    """TWIN's two stages over one set of multi-head target-attention parameters: the GSU's scores of every
    event select the top k, the ESU attends to them with those same scores."""

    def __init__(self, dim: int, heads: int, match_pairs: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.match_weight = match_weight(heads, match_pairs) if match_pairs else None

    def forward(
        self, tokens: Tensor, candidate: Tensor, row: Tensor, match: Tensor, lengths: Tensor, top_k: int,
        longest: int | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Packed behaviour tokens [N, d] of rows [N] (`lengths` [B]), candidate tokens [B, d], each behaviour's
        similarity to its candidate [N, P] -> the ESU's output [B, d], its attention weights [B, H, k'] and the
        selected events' packed indices [B, k'] (k' = min(top_k, longest row); `longest`: top_k_per_row)."""
        scores = self.scores(tokens, candidate, row, match)  # [N, H], every event (GSU)
        index, valid = top_k_per_row(scores.mean(-1), lengths, top_k, longest)  # ranked by the heads' mean score
        out, weights = self.attend(scores[index], tokens[index], valid)  # ESU over the top k
        return out, weights, index

    def scores(self, tokens: Tensor, candidate: Tensor, row: Tensor, match: Tensor) -> Tensor:
        """Scores [N, H] of packed behaviour tokens [N, d] (their rows [N]) for their row's candidate token
        (candidate [B, d]); match [N, P]: each behaviour's similarity to its candidate."""
        n, b = tokens.shape[0], candidate.shape[0]
        keys = self.k(tokens).view(n, self.heads, self.head_dim)
        queries = self.q(candidate).view(b, self.heads, self.head_dim)
        scores = torch.einsum("nhd,nhd->nh", keys, queries[row]) / math.sqrt(self.head_dim)
        if self.match_weight is not None:
            scores = scores + match_bias(match, self.match_weight)
        return scores

    def attend(self, scores: Tensor, tokens: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax over each row's valid keys: scores [B, k, H], tokens [B, k, d], valid [B, k] -> the output
        [B, d] (0 for a row with no valid key) and the attention weights [B, H, k]."""
        scores = scores.float().masked_fill(~valid[..., None], float("-inf")).transpose(1, 2)  # [B, H, k]
        top = scores.detach().amax(-1, keepdim=True) if scores.shape[-1] else scores.new_zeros(())
        weights = torch.exp(scores - top.masked_fill(top == float("-inf"), 0.0))  # a row with no valid key: 0
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-30)
        values = split_heads(self.v(tokens), self.heads)  # [B, H, k, dh]
        out = torch.matmul(weights.unsqueeze(2).to(values.dtype), values).squeeze(2)  # [B, H, dh]
        return self.out(out.flatten(1)), weights


class TWIN(PooledSequence):
    def __init__(self, cfg: ModelConfig, dims: DenseDims) -> None:
        heads = cfg.token_dim // cfg.head_dim
        super().__init__(cfg, dims, readout_heads=heads)
        self.top_k = cfg.twin_top_k
        self.attention = TwinAttention(cfg.token_dim, heads, len(self.match_pairs))

    def pool(
        self, lengths: Tensor, row: Tensor, tokens: Tensor, candidate: Tensor, match: Tensor, longest: int | None = None
    ) -> Tensor:
        out, weights, index = self.attention(tokens, candidate, row, match, lengths, self.top_k, longest)
        if not self.match_readout:
            return out
        readout = attended_similarity(weights.unsqueeze(2), match[index].unsqueeze(1)).squeeze(1)  # [B, H * P]
        return torch.cat([out, readout], dim=-1)

    def flops(self, lengths: list[int]) -> int:
        d, heads, pairs = self.cfg.token_dim, self.attention.heads, len(self.match_pairs)
        events, rows = sum(lengths), len(lengths)
        selected = rows * min(self.top_k, max(lengths, default=0))  # the ESU's padded slots
        gsu = events * (2 * d * d + 2 * d + 2 * heads * pairs)  # keys, scores, match bias of every event
        esu = selected * (2 * d * d + 2 * d + 2 * heads * pairs * bool(self.match_readout))  # values, sum, readout
        return super().flops(lengths) + gsu + esu + rows * 2 * (2 * d * d)  # + query and output projections

    def compute_units(self) -> ComputeUnits:
        units = super().compute_units()
        units.attention = [self.attention]  # GSU scores and ESU: bf16 "attention"
        return units
