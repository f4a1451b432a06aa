"""KV-cached scoring for LONGER (the paper's serving scheme, in the spirit of HSTU's M-FALCON).

Every sequence-side and user-side state is candidate-independent (the candidate is the last token of a
causal layout), so `prefill` runs the user side once — per layer the keys/values of the tokens a candidate
attends to, plus the final sequence-query and user-global states — and `score` computes only candidate
rows: per layer, one query per candidate against its user's cache and itself. Scores equal the full
forward pass (tests/serve/test_kv_cache.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.inputs import DenseInputs
from ..models.longer import Longer, pool_queries


@dataclass
class UserCache:
    """What scoring needs from the user side, for U users."""

    keys_values: list[tuple[Tensor, Tensor]]  # per layer: K, V [U, H, L_j, dh] of candidate-independent tokens
    num_pad: list[Tensor]  # per layer: leading padded keys [U]
    seq_mean: Tensor  # [U, D] pooled final sequence-query states
    user_globals: Tensor  # [U, m - 1, D] final states of the CLS and user tokens
    user: Tensor  # [U, D_user] raw pooled user embeddings (head input)
    dense: Tensor  # [U, D_dense] raw dense features (head input)
    match_groups: Tensor | None = None  # [U, L', W] unit shared-table vectors summed per merged token


@torch.no_grad()
def prefill(model: Longer, x: DenseInputs) -> UserCache:
    """Run the user side of `x` (its `candidate` field is not read) once: the hybrid attention over the
    sequence and the user-side globals, keeping each layer's keys/values."""
    attention = model.attention
    merged, num_pad, match_groups, host_groups = model.encode_sequence(x)  # [U, L', D]
    kept: list = []
    states = attention(merged, model.user_globals(x), num_pad, keep_kv=kept, host_groups=host_groups)[0][-1]
    k_eff = attention.effective_queries(merged.shape[1])
    q_pad = attention.query_padding(num_pad, merged.shape[1])
    return UserCache(
        keys_values=[(k, v) for k, v, _ in kept], num_pad=[pad for _, _, pad in kept],
        seq_mean=pool_queries(states[:, :k_eff], q_pad), user_globals=states[:, k_eff:], user=x.user, dense=x.dense,
        match_groups=match_groups,
    )


@torch.no_grad()
def score(model: Longer, cache: UserCache, candidates: Tensor) -> Tensor:
    """Logits [U, C] of candidates [U, C, D_cand] (C per user; pad rows of users with fewer and ignore
    their scores): only the candidate rows are computed, against each user's cache."""
    attention = model.attention
    u, c = candidates.shape[:2]
    state = model.candidate_token(candidates)  # [U, C, D]
    match = model.candidate_similarity(cache.match_groups, candidates)  # [U, C, L', P] or None
    readout = None
    layers = [attention.cross, *attention.self_layers]
    for i, (layer, (k, v), num_pad) in enumerate(zip(layers, cache.keys_values, cache.num_pad)):
        # what the layer's forward runs for the candidates in training; the cross-causal layer (first) takes the
        # candidate match and gives the readout
        state, out = layer.candidate_rows(state, k, v, num_pad, match if i == 0 else None)
        readout = out if i == 0 else readout
    width = state.shape[-1]
    globals_ = torch.cat([cache.user_globals.unsqueeze(1).expand(u, c, -1, width), state.unsqueeze(2)], dim=2)
    repeat = lambda t: t.unsqueeze(1).expand(u, c, t.shape[-1]).reshape(u * c, t.shape[-1])
    logits = model.head_from_states(
        repeat(cache.seq_mean), globals_.reshape(u * c, -1, width), candidates.reshape(u * c, -1),
        repeat(cache.user), repeat(cache.dense), None if readout is None else readout.reshape(u * c, -1),
    )
    return logits.view(u, c)
