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
from .token_merge import to_left_padded
from .units import ComputeUnits
from .user_state import ServingTraits, UserState

# the most (user, candidate) rows' events a direct `score` call expands at once: the rows of one chunk repeat their
# user's behaviour tokens, [events, d] and wider per-event tensors (DIN's attention input is 4d wide)
SCORE_CHUNK_EVENTS = 2**17


class NoSequence(nn.Module):
    def __init__(self, cfg: ModelConfig, dims: DenseDims) -> None:
        super().__init__()
        self.dims = dims
        self.head_dims = [dims.candidate + dims.user + dims.dense, *cfg.head_hidden, 1]
        self.head = MLP(self.head_dims[0], list(cfg.head_hidden), 1)

    serving = ServingTraits(cached=False)

    def forward(self, x: DenseInputs) -> Tensor:
        return self.head(torch.cat([x.candidate, x.user, x.dense], dim=-1)).squeeze(-1)

    def prefill(self, x: DenseInputs) -> UserState:
        """No history: the state is the head's user inputs (models/user_state.py)."""
        return UserState({"user": x.user, "dense": x.dense})

    def score(self, state: UserState, candidates: Tensor) -> Tensor:
        u, c = candidates.shape[:2]
        side = [state[name].unsqueeze(1).expand(u, c, state[name].shape[-1]) for name in ("user", "dense")]
        return self.head(torch.cat([candidates, *side], dim=-1)).squeeze(-1)  # [U, C]

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

    serving = ServingTraits(cached=False)  # the candidate enters every event's weight: scored directly

    def forward(self, x: DenseInputs) -> Tensor:
        row, recency = event_rows(x.lengths, x.events.shape[0])
        tokens = self.tokens(x.events, x.time_diff, recency)  # [N, d], valid events only
        units = unit_pairs(x.events, self.match_pairs, "event") if self.match_pairs else None
        return self._logits(x.lengths.long(), row, tokens, units, x.candidate, x.user, x.dense, x.padding()[0])

    def _logits(
        self, lengths: Tensor, row: Tensor, tokens: Tensor, units: Tensor | None, candidate: Tensor, user: Tensor,
        dense: Tensor, longest: int | None = None,
    ) -> Tensor:
        """Logits [B] of rows of `lengths` [B] events: their packed behaviour tokens [N, d] (rows [N]) and unit
        vectors for the candidate match [N, W] (None: off), the candidate / user / dense inputs [B, *]; `longest`:
        at least the longest row, when known without reading `lengths` (None: read if needed)."""
        candidate_token = self.candidate_token(candidate)  # [B, d]
        match = tokens.new_zeros((tokens.shape[0], 0))
        if units is not None:
            match = pair_similarity(units, unit_pairs(candidate, self.match_pairs, "candidate")[row], self.match_pairs)
        pooled = self.pool(lengths, row, tokens, candidate_token, match, longest)
        return self.head(torch.cat([pooled, candidate_token, candidate, user, dense], dim=-1)).squeeze(-1)

    def prefill(self, x: DenseInputs) -> UserState:
        """The behaviour tokens, left-padded (`tokens` [U, L, d], `pad` leading padded), with the candidate
        match the events' unit vectors (`units` [U, L, W]), and the head's user inputs (models/user_state.py)."""
        lengths = x.lengths.long()
        rows = event_rows(lengths, x.events.shape[0])
        per_event = [self.tokens(x.events, x.time_diff, rows[1])]
        if self.match_pairs:
            per_event.append(unit_pairs(x.events, self.match_pairs, "event"))
        longest = x.padding()[0]
        padded = to_left_padded(torch.cat(per_event, dim=-1), lengths, longest, rows)[0]  # [U, L, d (+ W)]
        d = self.cfg.token_dim
        tensors = {"tokens": padded[..., :d], "pad": longest - lengths, "user": x.user, "dense": x.dense}
        layout = {"tokens": (1, "pad")}
        if self.match_pairs:
            tensors["units"], layout["units"] = padded[..., d:], (1, "pad")
        return UserState(tensors, layout)

    def score(self, state: UserState, candidates: Tensor) -> Tensor:
        """Logits [U, C] of candidates [U, C, D_cand]: the training forward of every (user, candidate) row, each
        row holding its user's behaviour tokens, a chunk of candidates at a time (SCORE_CHUNK_EVENTS)."""
        u, c = candidates.shape[:2]
        tokens = state["tokens"]
        length = tokens.shape[1]
        valid = torch.arange(length, device=tokens.device)[None, :] >= state["pad"][:, None]  # [U, L]
        lengths = valid.sum(1)  # [U]
        first = torch.cumsum(lengths, 0) - lengths  # each user's first event among the valid ones
        per_event = tokens[valid]  # [N, d], user by user, oldest first
        units = state["units"][valid] if "units" in state.tensors else None

        def chunk(part: Tensor) -> Tensor:  # candidates [U, n, D_cand] -> logits [U, n]
            n = part.shape[1]
            row_lengths = lengths.repeat_interleave(n)  # rows (user, candidate), user-major
            row, recency = event_rows(row_lengths, n * per_event.shape[0])  # each user's events n times
            index = first[row // n] + row_lengths[row] - 1 - recency  # each row's events: its user's
            return self._logits(
                row_lengths, row, per_event[index], None if units is None else units[index], part.reshape(u * n, -1),
                state["user"].repeat_interleave(n, 0), state["dense"].repeat_interleave(n, 0), longest=length,
            ).view(u, n)

        if torch.compiler.is_compiling():  # torch.export: sizes are symbolic, one chunk
            return chunk(candidates)
        step = max(1, SCORE_CHUNK_EVENTS // max(1, length * u))
        return torch.cat([chunk(part) for part in candidates.split(step, dim=1)], dim=1) if c else candidates[..., 0]

    def pool(
        self, lengths: Tensor, row: Tensor, tokens: Tensor, candidate: Tensor, match: Tensor, longest: int | None = None
    ) -> Tensor:
        """The pooled vector [B, d (+ readout)] from the packed events' rows [N], behaviour tokens [N, d] and
        similarities to their row's candidate [N, P], and the candidate tokens [B, d] (`longest`: `_logits`): here
        the per-event
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
