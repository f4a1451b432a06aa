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
from .user_state import ServingTraits, UserState


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

        The history rows attend over the history only (`history_rows`) and the candidate row over everything
        (`candidate_rows`): the causal mask over the whole layout, computed without the history's never-used
        scores for the candidate's key."""
        history, k, v = self.history_rows(x[:, :-1], allowed[:, :-1, :-1], distance[:-1, :-1], time_bucket[:, :-1, :-1])
        candidate, weights = self.candidate_rows(
            x[:, -1:], k, v, self._bias(distance[-1:, :-1], time_bucket[:, -1:, :-1]), allowed[:, -1, :-1],
            None if match is None else match.unsqueeze(1),
        )
        return torch.cat([history, candidate], dim=1), weights

    def history_rows(self, x: Tensor, allowed: Tensor, distance: Tensor, time_bucket: Tensor) -> tuple[Tensor, ...]:
        """The history's rows x [B, L, D] under the causal mask `allowed` [B, L, L] -> their new states [B, L, D]
        and their keys and values [B, H, L, dh] (what a candidate's row attends to: KV-cached serving keeps
        them)."""
        u, q, k, v = self._project(x)
        attn, _ = self._pointwise(q, k, v, self._bias(distance, time_bucket), allowed)
        return self._finish(x, u, attn), k, v

    def candidate_rows(
        self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor, valid: Tensor, match: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """C candidates per row x [B, C, D] (independent of each other), each the last position of its row's
        layout: it attends to the history's keys and values k, v [B, H, L, dh] (valid [B, L]: not padding) with
        the relative bias `bias` [B, 1, 1, L] of its position and time to theirs (plus, with `match` [B, C, L, P],
        the candidate match), and to itself (distance 0, time gap 0). Returns their new states [B, C, D] and
        their attention weights over the history [B, H, C, L]."""
        u, q, k_self, v_self = self._project(x)  # [B, H, C, dh]
        if match is not None:  # the candidate match: its own key gets none
            bias = bias + match_bias(match, self.match_weight).permute(0, 3, 1, 2)  # [B, H, C, L]
        history, weights = self._pointwise(q, k, v, bias, valid.unsqueeze(1))  # [B, H, C, dh]
        own = F.silu((q * k_self).sum(-1, keepdim=True) + self.position_bias[0] + self.time_bias[0])  # bucket(0) = 0
        return self._finish(x, u, history + own * v_self), weights / self.normaliser

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """U [B, n, H * dh] and Q, K, V [B, H, n, dh] of tokens x [B, n, D]: one fused projection, SiLU on all
        four; Q scaled by 1/√dh and V by 1/N (A = SiLU(.) / N, applied to V)."""
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))  # [B, H, n, dh]
        return u, q / math.sqrt(self.head_dim), k, v / self.normaliser

    def _finish(self, x: Tensor, u: Tensor, attn: Tensor) -> Tensor:
        """Y = X + W_o (U ⊙ Norm(A V)); attn [B, H, n, dh]."""
        return x + self.out(self.dropout(u * self.norm_attn(merge_heads(attn))))

    def _bias(self, distance: Tensor, time_bucket: Tensor) -> Tensor:
        """The relative attention bias of (position, key) pairs [B, 1, rows, keys] (shared by the heads)."""
        return (self.position_bias[distance] + self.time_bias[time_bucket]).unsqueeze(1)

    @staticmethod
    def _pointwise(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
        """HSTU's attention without softmax: w = SiLU(q k^T + bias) where allowed, else 0. q [B, H, m, dh],
        k, v [B, H, n, dh], bias [B, 1 or H, m, n], allowed [B, m or 1, n] -> (w @ v [B, H, m, dh], w)."""
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

    @property
    def serving(self) -> ServingTraits:
        return ServingTraits(cached=True)

    def _history(self, x: DenseInputs) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        """The history left-padded to the batch's longest (or `x.capacity`): behaviour tokens [B, L, d], the
        events' unit vectors for the candidate match [B, L, W] (None: off), seconds before the request [B, L]
        (exact) and which positions hold an event [B, L]."""
        b, n = x.lengths.shape[0], x.events.shape[0]
        lengths = x.lengths.long()
        longest = (x.capacity if x.capacity is not None else x.longest if x.longest is not None
                   else int(lengths.max()) if b else 0)
        rows = event_rows(lengths, n)  # each event's row and recency [N]
        per_event = [self.tokens(x.events, x.time_diff, rows[1])]
        if self.match_pairs:
            per_event.append(unit_pairs(x.events, self.match_pairs, "event"))
        padded, valid = to_left_padded(torch.cat(per_event, dim=-1), lengths, longest, rows)  # [B, L, d (+ W)]
        ago = to_left_padded(x.time_diff[:, None], lengths, longest, rows)[0][..., 0]  # [B, L] seconds, exact
        d = self.cfg.token_dim
        return padded[..., :d], padded[..., d:] if self.match_pairs else None, ago, valid

    def _layout(self, valid: Tensor, ago: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For a layout of n positions (valid [B, n]: not padding; ago [B, n]: seconds before the request): the
        keys each position sees under the causal mask [B, n, n], and each (position, key) pair's distance [n, n]
        and time-gap bucket [B, n, n]."""
        b, size = valid.shape
        positions = torch.arange(size, device=valid.device)
        allowed = (positions[None, :, None] >= positions[None, None, :]) & valid[:, None, :]  # [B, n, n]
        distance = (positions[:, None] - positions[None, :]).clamp(0, self.dims.max_len)  # [n, n]
        # of t_i - t_j = ago_j - ago_i; a few rows at a time bound the temporaries (one piece under torch.export,
        # where the number of rows is symbolic)
        pieces = [ago] if torch.compiler.is_compiling() else ago.split(64)
        time_bucket = torch.cat([
            time_diff_bucket(rows[:, None, :] - rows[:, :, None], self.cfg.time_buckets) for rows in pieces
        ]) if b else ago.new_zeros((0, size, size))
        return allowed, distance, time_bucket

    def encode(self, x: DenseInputs) -> HSTUStates:
        tokens, units, ago, valid = self._history(x)
        b, longest = valid.shape
        candidate = self.candidate_token(x.candidate).unsqueeze(1)
        states = torch.cat([tokens, candidate], dim=1)  # [B, L + 1, d]
        # the candidate is the last position: never padding, 0 seconds before the request
        allowed, distance, time_bucket = self._layout(torch.cat([valid, valid.new_ones(b, 1)], dim=1),
                                                      torch.cat([ago, ago.new_zeros(b, 1)], dim=1))
        match = None
        if units is not None:
            match = group_similarity(units, unit_pairs(x.candidate, self.match_pairs, "candidate").unsqueeze(1),
                                     self.match_pairs)[:, 0]  # [B, L, P]
        layers, weights = [], None
        for layer in self.layers:
            states, weights = layer(states, allowed, distance, time_bucket, match)
            layers.append(states)
        readout = attended_similarity(weights, match.unsqueeze(1)).squeeze(1) if self.readout else None
        return HSTUStates(num_pad=longest - x.lengths.long(), layers=layers, match_readout=readout)

    def forward(self, x: DenseInputs) -> Tensor:
        """Logits [B] from the candidate's final state (and match readout) and the raw side inputs."""
        states = self.encode(x)
        return self._logits(states.layers[-1][:, -1], states.match_readout, x.candidate, x.user, x.dense)

    def _logits(self, final: Tensor, readout: Tensor | None, candidate: Tensor, user: Tensor, dense: Tensor) -> Tensor:
        """The head over the candidate's final state [B, d], its match readout and the raw side inputs -> [B]."""
        features = [final, *([] if readout is None else [readout]), candidate, user, dense]
        return self.head(torch.cat(features, dim=-1)).squeeze(-1)

    def prefill(self, x: DenseInputs) -> UserState:
        """The history run through every layer once (models/user_state.py): each layer's keys and values
        (`k<i>`, `v<i>` [U, H, L, dh], `pad` leading padded), each event's time-gap bucket to the request (the
        candidate's row bias, `bucket` [U, L]), with the candidate match the events' unit vectors (`units`)."""
        tokens, units, ago, valid = self._history(x)
        allowed, distance, time_bucket = self._layout(valid, ago)
        states, tensors = tokens, {}
        for i, layer in enumerate(self.layers):
            states, tensors[f"k{i}"], tensors[f"v{i}"] = layer.history_rows(states, allowed, distance, time_bucket)
        tensors.update(pad=valid.shape[1] - x.lengths.long(), bucket=time_diff_bucket(ago, self.cfg.time_buckets),
                       user=x.user, dense=x.dense)
        padded = {**{f"{kv}{i}": (2, "pad") for i in range(len(self.layers)) for kv in "kv"}, "bucket": (1, "pad")}
        if units is not None:
            tensors["units"], padded["units"] = units, (1, "pad")
        return UserState(tensors, padded)

    def score(self, state: UserState, candidates: Tensor) -> Tensor:
        """Logits [U, C] of candidates [U, C, D_cand]: per layer, each candidate's row (`candidate_rows`, as in
        the training forward) against its user's keys and values; it sits right after the history."""
        u, c = candidates.shape[:2]
        length = state["k0"].shape[2]
        positions = torch.arange(length, device=candidates.device)
        valid = positions[None, :] >= state["pad"][:, None]  # [U, L]
        distance = (length - positions).clamp(0, self.dims.max_len)[None, :]  # [1, L]
        match = None
        if "units" in state.tensors:
            match = group_similarity(state["units"], unit_pairs(candidates, self.match_pairs, "candidate"),
                                     self.match_pairs)  # [U, C, L, P]
        token, weights = self.candidate_token(candidates), None  # [U, C, d]
        for i, layer in enumerate(self.layers):
            bias = layer._bias(distance, state["bucket"].unsqueeze(1))  # [U, 1, 1, L]
            token, weights = layer.candidate_rows(token, state[f"k{i}"], state[f"v{i}"], bias, valid, match)
        readout = attended_similarity(weights, match).reshape(u * c, -1) if self.readout else None
        expand = lambda t: t.unsqueeze(1).expand(u, c, t.shape[-1]).reshape(u * c, t.shape[-1])
        logits = self._logits(token.reshape(u * c, -1), readout, candidates.reshape(u * c, -1),
                              expand(state["user"]), expand(state["dense"]))
        return logits.view(u, c)

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
