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

How the history's attention is computed (`history_attention`): no per-pair tensor lives beyond one tile. Each
layer's bias is one table over (distance, time bucket) with a masked row for keys after the query
(`HSTULayer.bias_table`); every pair's place in it is an int32 index computed once per batch and shared by the
layers (`pair_index`), so the bias and the causal mask are one gather. Blocks of query rows run against their keys
up to the block's last row (the tiles above the diagonal are never computed), and the backward recomputes a tile's
scores instead of keeping them. Padding keys are masked by zeroing their values, which zeroes their weights'
contribution and every gradient through them.

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
from torch.utils import flop_counter

from ..config import ModelConfig
from .blocks import MLP, make_norm, merge_heads, split_heads
from .candidate_match import attended_similarity, group_similarity, match_bias, match_weight, unit_pairs
from .flops import mlp_flops
from .inputs import DenseDims, DenseInputs, event_rows
from .token_builder import TokenBuilder, time_diff_bucket, token_flops
from .token_merge import to_left_padded
from .units import ComputeUnits
from .user_state import ServingTraits, UserState

# history rows per tile of `history_attention`: a tile holds B x H x rows x keys scores (the smaller tiles of 64
# rows ran faster than 128 or 256 on CPU, their scores staying in the caches)
QUERY_BLOCK = 64
# the bias of a key after its query: SiLU of a score this low and its derivative are exactly 0 in fp32 and bf16
# (the sigmoid underflows below about -104), so such a pair adds nothing forward or backward
MASKED_BIAS = -1e30
# FlopCounterMode counts aten.baddbmm but not its in-place form, which the tiles use: the same formula
if torch.ops.aten.baddbmm_ not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(torch.ops.aten.baddbmm_, get_raw=True)(
        flop_counter.flop_registry[torch.ops.aten.baddbmm])


@dataclass
class PairIndex:
    """Where each (position, key) pair of a batch finds its relative attention bias in a layer's bias table
    (`HSTULayer.bias_table`), computed once per batch for every layer (`pair_index`)."""

    seen: Tensor  # [B, n] bool: the keys that are not padding (the candidate's included)
    history: list[tuple[int, Tensor]]  # per block of history rows: (first row r, int32 [B, rows, r + rows])
    candidate: Tensor  # [B, n] int32: the candidate row's pairs


def pair_index(ago: Tensor, seen: Tensor, num_buckets: int, max_len: int, block: int) -> PairIndex:
    """ago [B, n]: seconds before the request of each position (the candidate last, 0), seen [B, n]. A pair (i, j)
    indexes column min(i - j, max_len) + 1 of the bias table (column 0, keys after the query: masked) in row
    bucket(t_i - t_j) = bucket(ago_j - ago_i); the history's pairs in tiles of `block` query rows against keys
    0 .. the tile's last row.
    (Bucket-major: neighbouring keys of a query are neighbours in the table, for the gather and its gradient.)"""
    n = ago.shape[1]
    seconds = ago.double()  # whole seconds: the differences are exact
    positions = torch.arange(n, device=ago.device)

    def index(rows: slice, keys: int, bucket: Tensor) -> Tensor:
        column = (positions[rows, None] - positions[None, :keys]).clamp(-1, max_len) + 1  # [rows, keys]
        return column.to(torch.int32).add(bucket, alpha=max_len + 2)

    history = []
    for start in range(0, n - 1, block):
        rows = slice(start, min(start + block, n - 1))
        gap = torch.sub(seconds[:, None, : rows.stop], seconds[:, rows, None],  # [B, rows, keys], rounded once
                        out=seconds.new_empty((ago.shape[0], rows.stop - start, rows.stop), dtype=torch.float32))
        history.append((start, index(rows, rows.stop, time_diff_bucket(gap, num_buckets, torch.int32, overwrite=True))))
    candidate = index(slice(n - 1, n), n, time_diff_bucket(seconds, num_buckets, torch.int32)[:, None])[:, 0]
    return PairIndex(seen=seen, history=history, candidate=candidate)


class _HistoryAttention(torch.autograd.Function):
    """out = SiLU(q k^T + table[index]) v over the tiles of `index` (q, k, v [B, H, n, dh]; table [T]; index: the
    history tiles of `PairIndex`), without autocast: in q's dtype, the same forward and backward. The backward
    recomputes each tile's scores; the table's gradient sums every pair's score gradient into its entry."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, table: Tensor, tiles: list[tuple[int, Tensor]]) -> Tensor:
        ctx.save_for_backward(q, k, v, table)
        ctx.tiles = tiles
        with torch.autocast(q.device.type, enabled=False):
            return _history_forward(q, k, v, table, tiles)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, table = ctx.saved_tensors
        b, h, n, _ = q.shape
        q, k, v, grad = (t.reshape(b * h, n, t.shape[-1]) for t in (q, k, v, grad))
        dq, dk, dv = [], torch.zeros_like(k), torch.zeros_like(v)
        dtable = torch.zeros_like(table)
        with torch.autocast(q.device.type, enabled=False):
            for start, index in ctx.tiles:
                stop = start + index.shape[1]
                scores = _scores(q, k, table, start, index, h)  # [B * H, rows, stop]
                rows = grad[:, start:stop]
                dv[:, :stop] += torch.bmm(F.silu(scores).transpose(1, 2), rows)
                # SiLU's derivative applied to the weights' gradient, as autograd's backward of F.silu does
                dscores = torch.ops.aten.silu_backward(torch.bmm(rows, v[:, :stop].transpose(1, 2)), scores)
                dq.append(torch.bmm(dscores, k[:, :stop]))
                dk[:, :stop] += torch.bmm(dscores.transpose(1, 2), q[:, start:stop])
                per_pair = (dscores.view(b, h, *dscores.shape[1:]).sum(1) if h > 1 else dscores).to(table.dtype)
                # (bincount's weights in the table's dtype: it returns float64 for bfloat16 weights)
                dtable += torch.bincount(index.view(-1), per_pair.view(-1), minlength=table.shape[0])
        dq = torch.cat(dq, dim=1) if dq else torch.zeros_like(q)
        return *(t.view(b, h, n, t.shape[-1]) for t in (dq, dk, dv)), dtable, None


def _history_forward(q: Tensor, k: Tensor, v: Tensor, table: Tensor, tiles: list[tuple[int, Tensor]]) -> Tensor:
    """The forward of `_HistoryAttention`: SiLU(q k^T + table[index]) v, tile by tile (q, k, v [B, H, n, dh])."""
    b, h, n, _ = q.shape
    q, k, v = (t.reshape(b * h, n, t.shape[-1]) for t in (q, k, v))
    out = [torch.bmm(F.silu(_scores(q, k, table, start, index, h), inplace=True), v[:, : start + index.shape[1]])
           for start, index in tiles]
    return torch.cat(out, dim=1).view(b, h, n, v.shape[-1]) if out else q.new_zeros(b, h, 0, v.shape[-1])


def _scores(q: Tensor, k: Tensor, table: Tensor, start: int, index: Tensor, heads: int) -> Tensor:
    """q k^T + bias of one tile [B * H, rows, keys] (q, k [B * H, n, dh]): the bias gathered, then the product
    accumulated onto it."""
    b, rows, keys = index.shape
    bias = table.index_select(0, index.view(-1)).to(q.dtype).view(b, 1, rows, keys)
    # one copy per head (the product is accumulated onto it in place); for one head, the gathered tensor itself
    bias = bias.expand(b, heads, rows, keys).contiguous().view(b * heads, rows, keys)
    return bias.baddbmm_(q[:, start: start + rows], k[:, :keys].transpose(1, 2))


def history_attention(q: Tensor, k: Tensor, v: Tensor, table: Tensor, tiles: list[tuple[int, Tensor]]) -> Tensor:
    """HSTU's pointwise attention of the history rows [B, H, n, dh] over the history keys (`_HistoryAttention`;
    its forward alone where no gradient is needed or under torch.export, which traces plain ops)."""
    if torch.compiler.is_compiling() or not (torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k, v, table))):
        return _history_forward(q, k, v, table, tiles)
    return _HistoryAttention.apply(q, k, v, table, tiles)


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

    def forward(self, x: Tensor, pairs: PairIndex, match: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, n, D]: the history (left-padded), then the candidate; pairs: the batch's `pair_index`; match
        [B, n - 1, P]: the candidate's similarity to each history position (None: off). Returns the new states
        [B, n, D] and the candidate's attention weights over the history [B, H, 1, n - 1].

        The history rows attend over the history only (`history_rows`) and the candidate row over everything
        (`candidate_rows`): the causal mask over the whole layout, computed without the history's never-used
        scores for the candidate's key. Serving runs the same two halves apart (`HSTU.prefill`, `HSTU.score`)."""
        table = self.bias_table()
        history, k, v = self.history_rows(x[:, :-1], pairs, table)
        candidate, weights = self.candidate_rows(
            x[:, -1:], k, v, table[pairs.candidate[:, :-1]][:, None, None], pairs.seen[:, :-1],
            None if match is None else match.unsqueeze(1),
        )
        return torch.cat([history, candidate], dim=1), weights

    def history_rows(self, x: Tensor, pairs: PairIndex, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The history's rows x [B, L, D] (the `pairs.history` tiles of a layout of L + 1 positions, the
        candidate last) -> their new states [B, L, D] and their keys and values [B, H, L, dh], the values of
        padding zeroed (what a candidate's row attends to: KV-cached serving keeps them)."""
        u, q, k, v = self._project(x)
        v = v * pairs.seen[:, None, :-1, None]  # padding: 0
        return self._finish(x, u, history_attention(q, k, v, table, pairs.history)), k, v

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
        weights = torch.where(valid[:, None, None], F.silu(torch.matmul(q, k.transpose(-1, -2)) + bias), 0.0)
        own = F.silu((q * k_self).sum(-1, keepdim=True) + self.position_bias[0] + self.time_bias[0])  # bucket(0) = 0
        return self._finish(x, u, torch.matmul(weights, v) + own * v_self), weights / self.normaliser

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """U [B, n, H * dh] and Q, K, V [B, H, n, dh] of tokens x [B, n, D]: one fused projection, SiLU on all
        four; Q scaled by 1/sqrt(dh) and V by 1/N (A = SiLU(.) / N, applied to V)."""
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))  # [B, H, n, dh]
        return u, q / math.sqrt(self.head_dim), k, v / self.normaliser

    def _finish(self, x: Tensor, u: Tensor, attn: Tensor) -> Tensor:
        """Y = X + W_o (U * Norm(A V)); attn [B, H, n, dh]."""
        return x + self.out(self.dropout(u * self.norm_attn(merge_heads(attn))))

    def bias_table(self) -> Tensor:
        """The relative attention bias of every (time bucket, distance) [buckets x (max_len + 2)], flattened:
        column 0 masks (a key after its query), column 1 + d holds w_time[bucket] + w_pos[d] (`pair_index` indexes
        it)."""
        bias = self.time_bias[:, None] + self.position_bias[None, :]
        return torch.cat([bias.new_full((bias.shape[0], 1), MASKED_BIAS), bias], dim=1).view(-1)


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
        """The history left-padded to `x.padding()`'s length: behaviour tokens [B, L, d], the
        events' unit vectors for the candidate match [B, L, W] (None: off), seconds before the request [B, L]
        (exact) and which positions hold an event [B, L]."""
        n = x.events.shape[0]
        lengths = x.lengths.long()
        longest = x.padding()[0]
        rows = event_rows(lengths, n)  # each event's row and recency [N]
        per_event = [self.tokens(x.events, x.time_diff, rows[1])]
        if self.match_pairs:
            per_event.append(unit_pairs(x.events, self.match_pairs, "event"))
        padded, valid = to_left_padded(torch.cat(per_event, dim=-1), lengths, longest, rows)  # [B, L, d (+ W)]
        ago = to_left_padded(x.time_diff[:, None], lengths, longest, rows)[0][..., 0]  # [B, L] seconds, exact
        d = self.cfg.token_dim
        return padded[..., :d], padded[..., d:] if self.match_pairs else None, ago, valid

    def _pairs(self, valid: Tensor, ago: Tensor) -> PairIndex:
        """The `pair_index` of the layout [history | candidate]: the candidate is the last position, never
        padding, 0 seconds before the request."""
        b = valid.shape[0]
        return pair_index(torch.cat([ago, ago.new_zeros(b, 1)], dim=1), torch.cat([valid, valid.new_ones(b, 1)], dim=1),
                          self.cfg.time_buckets, self.dims.max_len, QUERY_BLOCK)

    def encode(self, x: DenseInputs) -> HSTUStates:
        tokens, units, ago, valid = self._history(x)
        longest = valid.shape[1]
        states = torch.cat([tokens, self.candidate_token(x.candidate).unsqueeze(1)], dim=1)  # [B, L + 1, d]
        pairs = self._pairs(valid, ago)
        match = None
        if units is not None:
            match = group_similarity(units, unit_pairs(x.candidate, self.match_pairs, "candidate").unsqueeze(1),
                                     self.match_pairs)[:, 0]  # [B, L, P]
        layers, weights = [], None
        for layer in self.layers:
            states, weights = layer(states, pairs, match)
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
        (`k<i>`, `v<i>` [U, H, L, dh], `pad` leading padded), where each event's bias for the candidate's row is
        in a layer's bias table (`bias_index` [U, L]: its distance to the candidate and time gap to the request),
        with the candidate match the events' unit vectors (`units`)."""
        tokens, units, ago, valid = self._history(x)
        pairs = self._pairs(valid, ago)
        states, tensors = tokens, {}
        for i, layer in enumerate(self.layers):
            states, tensors[f"k{i}"], tensors[f"v{i}"] = layer.history_rows(states, pairs, layer.bias_table())
        tensors.update(pad=valid.shape[1] - x.lengths.long(), bias_index=pairs.candidate[:, :-1], user=x.user,
                       dense=x.dense)
        padded = {**{f"{kv}{i}": (2, "pad") for i in range(len(self.layers)) for kv in "kv"}, "bias_index": (1, "pad")}
        if units is not None:
            tensors["units"], padded["units"] = units, (1, "pad")
        return UserState(tensors, padded)

    def score(self, state: UserState, candidates: Tensor) -> Tensor:
        """Logits [U, C] of candidates [U, C, D_cand]: per layer, each candidate's row (`candidate_rows`, as in
        the training forward) against its user's keys and values; it sits right after the history."""
        u, c = candidates.shape[:2]
        length = state["k0"].shape[2]
        valid = torch.arange(length, device=candidates.device)[None, :] >= state["pad"][:, None]  # [U, L]
        match = None
        if "units" in state.tensors:
            match = group_similarity(state["units"], unit_pairs(candidates, self.match_pairs, "candidate"),
                                     self.match_pairs)  # [U, C, L, P]
        token, weights = self.candidate_token(candidates), None  # [U, C, d]
        for i, layer in enumerate(self.layers):
            bias = layer.bias_table()[state["bias_index"]][:, None, None]  # [U, 1, 1, L]
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
