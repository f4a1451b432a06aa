"""HSTU, the hierarchical sequential transduction unit of "Actions Speak Louder than Words: Trillion-Parameter
Sequential Transducers for Generative Recommendations" (Zhai et al., ICML 2024), as a ranking model on the
baselines' behaviour tokens and head inputs (docs/model.md, "HSTU").

Layout: [behaviour tokens (left-padded, oldest first) | candidate token], `model.hstu_layers` layers under a
causal mask: a history position sees itself and the older events, the candidate (last) sees the whole
history and itself, and no history position sees the candidate — so every history state is
candidate-independent (tested) and could be cached per user, like LONGER's. The candidate's final state
goes to the head, as the target's output does in generative-recommenders' ranking model (DLRM-v3).

One layer, as in meta-recsys/generative-recommenders (`research/modeling/sequential/hstu.py`:
`SequentialTransductionUnitJagged`, `RelativeBucketedTimeAndPositionBasedBias`; `modules/stu.py`: `STULayer`):

    U, V, Q, K = split(SiLU(W_uvqk · Norm(X) + b))          one fused projection, SiLU on all four
    A = SiLU(Q K^T / √d + rab) / N   (causal, padding masked)  pointwise attention, no softmax
    Y = X + W_o (U ⊙ Norm(A V))

rab(i, j) = w_pos[i − j] + w_time[bucket(t_i − t_j)]: a learned relative attention bias over position
distance and time-gap buckets, one per layer, shared by the heads. N = data.max_len + 1, the longest layout.

With the candidate match on (models/candidate_match.py), the candidate's row of every layer adds the learned
per-head bias Σ_p w_{h,p}·s_{j,p} of its similarity to event j, as LONGER's candidate row does, and with
`attention_readout` the head also gets the last layer's Σ_j A_j·s_{j,p} per head and pair. Only the
candidate's own row changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from .blocks import MLP, make_norm, merge_heads, split_heads
from .candidate_match import attended_similarity, group_similarity, match_bias, match_weight, unit_pairs
from .flops import mlp_flops
from .inputs import DenseDims, DenseInputs, event_rows
from .token_builder import TokenBuilder, time_diff_bucket, token_flops
from .token_merge import to_left_padded
from .units import ComputeUnits


class HSTULayer(nn.Module):
    def __init__(
        self, dim: int, heads: int, head_dim: int, max_len: int, time_buckets: int, norm: str, dropout: float,
        match_pairs: int = 0,
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm_in = make_norm(norm, dim)
        self.uvqk = nn.Linear(dim, 4 * inner)  # U, V, Q, K (d_v = d_qk = head_dim)
        self.norm_attn = make_norm(norm, inner)
        self.out = nn.Linear(inner, dim)
        for linear in (self.uvqk, self.out):  # as STULayer
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.position_bias = nn.Parameter(torch.randn(max_len + 1) * 0.02)  # by distance i - j >= 0
        self.time_bias = nn.Parameter(torch.randn(time_buckets) * 0.02)
        self.match_weight = match_weight(heads, match_pairs) if match_pairs else None
        self.dropout = nn.Dropout(dropout)
        self.normaliser = float(max_len + 1)  # N: the longest layout

    def forward(
        self, x: Tensor, allowed: Tensor, distance: Tensor, time_bucket: Tensor, match: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """x [B, n, D]: the history (left-padded), then the candidate; allowed [B, n, n]: the keys each position
        sees; distance [n, n] and time_bucket [B, n, n] of each (position, key) pair; match
        [B, n - 1, P]: the candidate's similarity to each history position (None: off). Returns the new states
        [B, n, D] and the candidate's attention weights over the history [B, H, 1, n - 1].

        The history rows attend over the history only and the candidate row over everything: the causal mask
        over the whole layout, computed without the history's never-used scores for the candidate's key."""
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))  # [B, H, n, dh]
        q, v = q / math.sqrt(self.head_dim), v / self.normaliser  # A = SiLU(.) / N, applied to V
        history, _ = self._pointwise(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1],
                                     self._bias(distance[:-1, :-1], time_bucket[:, :-1, :-1]), allowed[:, :-1, :-1])
        bias = self._bias(distance[-1:], time_bucket[:, -1:])  # [B, 1, 1, n]
        if match is not None:  # the candidate match: its own key gets none
            bias = bias + F.pad(match_bias(match, self.match_weight).transpose(1, 2), (0, 1)).unsqueeze(2)
        candidate, silu = self._pointwise(q[:, :, -1:], k, v, bias, allowed[:, -1:])  # [B, H, 1, dh]
        attn = merge_heads(torch.cat([history, candidate], dim=2))  # [B, n, H * dh]
        y = x + self.out(self.dropout(u * self.norm_attn(attn)))
        return y, silu[..., :-1] / self.normaliser

    def _bias(self, distance: Tensor, time_bucket: Tensor) -> Tensor:
        """The relative attention bias of (position, key) pairs [B, 1, rows, keys] (shared by the heads)."""
        return (self.position_bias[distance] + self.time_bias[time_bucket]).unsqueeze(1)

    @staticmethod
    def _pointwise(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
        """HSTU's attention without softmax: w = SiLU(q k^T + bias) where allowed, else 0. q [B, H, m, dh],
        k, v [B, H, n, dh], bias [B, 1 or H, m, n], allowed [B, m, n] -> (w @ v [B, H, m, dh], w)."""
        weights = torch.where(allowed.unsqueeze(1), F.silu(torch.matmul(q, k.transpose(-1, -2)) + bias), 0.0)
        return torch.matmul(weights, v), weights


@dataclass
class HSTUStates:
    """Intermediate states, for tests."""

    num_pad: Tensor  # [B] padded history positions at the front
    layers: list[Tensor]  # per layer [B, L + 1, D]: the history (left-padded), then the candidate
    match_readout: Tensor | None = None  # [B, H * P] the candidate's attended similarity (candidate match)


class HSTU(nn.Module):
    def __init__(self, cfg: ModelConfig, dims: DenseDims) -> None:
        super().__init__()
        d = cfg.token_dim
        heads = d // cfg.head_dim
        self.cfg, self.dims = cfg, dims
        self.tokens = TokenBuilder(dims.event, d, cfg.time_buckets, dims.max_len)
        self.candidate_token = MLP(dims.candidate, [d], d)
        self.match_pairs = dims.match_pairs if cfg.candidate_match != "none" else ()
        self.layers = nn.ModuleList(
            HSTULayer(d, heads, cfg.head_dim, dims.max_len, cfg.time_buckets, cfg.norm, cfg.dropout,
                      len(self.match_pairs))
            for _ in range(cfg.hstu_layers)
        )
        self.readout = cfg.candidate_match == "attention_readout" and bool(self.match_pairs)
        readout_dim = heads * len(self.match_pairs) if self.readout else 0
        self.head_dims = [d + readout_dim + dims.candidate + dims.user + dims.dense, *cfg.head_hidden, 1]
        self.head = MLP(self.head_dims[0], list(cfg.head_hidden), 1)

    def encode(self, x: DenseInputs) -> HSTUStates:
        b, n = x.lengths.shape[0], x.events.shape[0]
        lengths = x.lengths.long()
        longest = x.longest if x.longest is not None else int(lengths.max()) if b else 0
        rows = event_rows(lengths, n)  # each event's row and recency [N]
        per_event = [self.tokens(x.events, x.time_diff, rows[1])]
        if self.match_pairs:
            per_event.append(unit_pairs(x.events, self.match_pairs, "event"))
        padded, valid = to_left_padded(torch.cat(per_event, dim=-1), lengths, longest, rows)  # [B, L, d (+ W)]
        ago = to_left_padded(x.time_diff[:, None], lengths, longest, rows)[0][..., 0]  # [B, L] seconds, exact
        d = self.cfg.token_dim
        tokens = padded[..., :d]
        candidate = self.candidate_token(x.candidate).unsqueeze(1)
        states = torch.cat([tokens, candidate], dim=1)  # [B, L + 1, d]
        size = longest + 1
        positions = torch.arange(size, device=lengths.device)
        seen = torch.cat([valid, valid.new_ones(b, 1)], dim=1)  # [B, L + 1] the keys that are not padding
        allowed = (positions[None, :, None] >= positions[None, None, :]) & seen[:, None, :]  # [B, n, n]
        distance = (positions[:, None] - positions[None, :]).clamp(0, self.dims.max_len)  # [n, n]
        ago = torch.cat([ago, ago.new_zeros(b, 1)], dim=1)  # seconds before the request; the candidate: 0
        time_bucket = torch.cat([  # of t_i - t_j = ago_j - ago_i; a few rows at a time bound the temporaries
            time_diff_bucket(rows[:, None, :] - rows[:, :, None], self.cfg.time_buckets) for rows in ago.split(64)
        ]) if b else ago.new_zeros((0, size, size))
        match = None
        if self.match_pairs:
            match = group_similarity(padded[..., d:], unit_pairs(x.candidate, self.match_pairs, "candidate")
                                     .unsqueeze(1), self.match_pairs)[:, 0]  # [B, L, P]
        layers, weights = [], None
        for layer in self.layers:
            states, weights = layer(states, allowed, distance, time_bucket, match)
            layers.append(states)
        readout = attended_similarity(weights, match.unsqueeze(1)).squeeze(1) if self.readout else None
        return HSTUStates(num_pad=longest - lengths, layers=layers, match_readout=readout)

    def forward(self, x: DenseInputs) -> Tensor:
        """Logits [B] from the candidate's final state (and match readout) and the raw side inputs."""
        states = self.encode(x)
        features = [states.layers[-1][:, -1], *([] if states.match_readout is None else [states.match_readout]),
                    x.candidate, x.user, x.dense]
        return self.head(torch.cat(features, dim=-1)).squeeze(-1)

    def flops(self, lengths: list[int]) -> int:
        """Forward FLOPs of a batch with these history lengths (matmuls, as FlopCounterMode counts them):
        tokens for valid events only, the layers over the batch padded to its longest history + 1."""
        d, rows, longest = self.cfg.token_dim, len(lengths), max(lengths, default=0)
        heads, dh = self.layers[0].heads, self.cfg.head_dim
        inner, n, pairs = heads * dh, longest + 1, len(self.match_pairs)
        flops = token_flops(sum(lengths), self.dims.event, d, self.cfg.time_buckets)
        per_layer = 2 * n * d * 4 * inner + 2 * n * inner * d  # uvqk, out
        per_layer += 2 * 2 * (longest * longest + n) * inner  # QK^T and AV: the history's rows, the candidate's
        per_layer += 2 * longest * pairs * heads  # the candidate row's match bias
        per_row = mlp_flops([self.dims.candidate, d, d]) + len(self.layers) * per_layer + mlp_flops(self.head_dims)
        if pairs:  # the candidate's similarity to every event, and the readout
            per_row += 2 * longest * sum(p.width for p in self.match_pairs) + 2 * heads * longest * pairs * self.readout
        return flops + rows * per_row

    def compute_units(self) -> ComputeUnits:
        """What the compute policies act on (models/units.py): an HSTU layer has no FFN."""
        layers = list(self.layers)
        return ComputeUnits(tokens=[self.tokens, self.candidate_token], attention=layers, head=[self.head],
                            shard=layers, recompute={"self": layers})
