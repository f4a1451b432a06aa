"""The dense LONGER network (arXiv 2505.04421): pure math on tensors, no torchrec, no parallelism.

Input: embedding tensors (see `DenseInputs`), so it runs with plain torch — TorchRec lookups happen in
`ranking.py`. Pipeline: behaviour tokens -> token merge -> global tokens appended -> hybrid attention ->
head over the global tokens' states, the mean of the sequence-query states and the raw side embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .blocks import MLP
from .candidate_match import group_similarity, unit_pairs
from .flops import longer_flops
from .hybrid_attention import HybridAttention
from .inputs import DenseDims, DenseInputs, event_rows
from .token_builder import TokenBuilder, event_time_position
from .token_merge import TokenMerge, stream_slots, to_left_padded
from .units import ComputeUnits
from .user_state import ServingTraits, UserState


@dataclass
class LongerStates:
    """Intermediate states, for tests and for KV-cached serving."""

    merged: Tensor  # [B, L', D] merged sequence tokens (left-padded)
    num_pad: Tensor  # [B] padded merged positions at the front
    layers: list[Tensor]  # per layer [B, k + m, D]: the k sequence queries (model.query_selection), m globals
    match_readout: Tensor | None = None  # [B, H * P] the candidate's attended similarity (candidate match)


def pool_queries(seq_q: Tensor, num_pad: Tensor) -> Tensor:
    """Mean of the valid sequence-query states [B, k, D] (the first num_pad [B] are padding) -> [B, D];
    0 for a row with no valid query (an empty history)."""
    k = seq_q.shape[1]
    w = (torch.arange(k, device=seq_q.device)[None, :] >= num_pad[:, None]).to(seq_q.dtype)[..., None]
    return (seq_q * w).sum(1) / w.sum(1).clamp(min=1.0)


class Longer(nn.Module):
    def __init__(self, cfg: ModelConfig, dims: DenseDims) -> None:
        super().__init__()
        self.cfg, self.dims = cfg, dims
        k = cfg.merge_k
        max_positions = -(-dims.max_len // k) * k
        self.tokens = TokenBuilder(dims.event, cfg.token_dim, cfg.time_buckets, max_positions)
        self.merge = TokenMerge(
            cfg.merge, k, cfg.token_dim, cfg.merge_proj_dim, cfg.inner_trans_heads, cfg.ffn_mult, cfg.norm,
            cfg.attention_impl,
        )
        width = self.merge.out_dim
        self.width = width
        self.cls = nn.Parameter(torch.randn(cfg.num_cls, width) * 0.02)
        self.has_user_token = dims.user + dims.dense > 0
        self.user_token = MLP(dims.user + dims.dense, [width], width) if self.has_user_token else None
        self.candidate_token = MLP(dims.candidate, [width], width)
        self.num_globals = cfg.num_cls + int(self.has_user_token) + 1
        self.match_pairs = dims.match_pairs if cfg.candidate_match != "none" else ()
        readout = cfg.candidate_match == "attention_readout"
        self.attention = HybridAttention(
            width, cfg.num_queries, cfg.num_self_layers, cfg.head_dim, cfg.ffn_mult, cfg.norm, cfg.dropout,
            cfg.attention_impl, match_pairs=len(self.match_pairs), match_readout=readout,
            query_selection=cfg.query_selection, length_chunks=cfg.length_chunks,
        )
        self.match_readout_dim = self.attention.cross.heads * len(self.match_pairs) if readout else 0
        head_in = width * (self.num_globals + 1) + self.match_readout_dim + dims.candidate + dims.user + dims.dense
        self.head = MLP(head_in, list(cfg.head_hidden), 1)

    def encode_sequence(self, x: DenseInputs) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Merged behaviour tokens [B, L', D] (left-padded, newest last), padded count per row [B], for the
        candidate match the events' unit shared-table vectors summed per merged token [B, L', W] (None: off), and
        the merged tokens per row on the host [B] (a CPU tensor; None where counting them would need a host sync
        the caller avoids: torch.compile, torch.export), with which the layers skip the padded positions."""
        b = x.lengths.shape[0]
        k = self.cfg.merge_k
        lengths = x.lengths.long()
        groups = torch.div(lengths + k - 1, k, rounding_mode="floor")  # merged tokens per row [B]
        longest, host = x.padding()  # the padded length; the rows' lengths on the host (None: traced, or not given)
        host_groups = None if host is None else torch.div(host + k - 1, k, rounding_mode="floor")
        live_groups = None if host_groups is None else int(host_groups.sum())
        total = (longest + k - 1) // k * k  # pad to a multiple of K at the front: the newest group is full
        n = x.events.shape[0]
        rows = event_rows(lengths, n)  # each event's row and recency [N]
        # every row holds `total` events (full rows, no padding): the packed rows are already the batch, so
        # padding costs nothing (no zero-filled copy, no scatter, no mask). Not under torch.export: its shapes
        # must not depend on the data.
        full = not torch.compiler.is_exporting() and n == b * total
        time, position = event_time_position(x.time_diff, lengths, rows, self.cfg.stream_tokens)
        slots, trailing = (rows, None) if not self.cfg.stream_tokens else stream_slots(lengths, rows, k)
        tokens = self.tokens(x.events, time, position)  # tokens of valid events only
        units = unit_pairs(x.events, self.match_pairs, "event") if self.match_pairs else None
        merged, match_groups = self._merge_groups(tokens, units, lengths, slots, trailing, total, live_groups, full)
        num_pad = merged.shape[1] - groups  # [B]
        return merged, num_pad, match_groups, host_groups

    def _merge_groups(
        self, tokens: Tensor, units: Tensor | None, lengths: Tensor, slots: tuple[Tensor, Tensor],
        trailing: Tensor | None, total: int, live_groups: int | None, full: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Packed behaviour tokens [N, d] of rows of `lengths` [B], each event's (row, slot) (`slots`: its recency,
        counted from the end of the row's `trailing` unfilled positions when groups are aligned to the oldest
        event) -> merged tokens [B, total / K, D], and for the candidate match the events' unit vectors `units`
        [N, W] summed per merged token [B, total / K, W] (None: off). `full`: every row holds `total` events."""
        b, k = lengths.shape[0], self.cfg.merge_k
        if full:  # the packed rows are already the batch: no zero-filled copy, no scatter, no mask
            padded, valid = tokens.view(b, total, tokens.shape[-1]), None
        else:
            padded, valid = to_left_padded(tokens, lengths, total, slots, trailing)
        match_groups = None
        if units is not None:
            if full:
                match_groups = units.view(b, total // k, k, units.shape[-1]).sum(2)
            else:  # summed straight into each event's group: no padded [B, L_pad, W] copy
                group = slots[0] * (total // k) + (total - 1 - slots[1]) // k
                match_groups = units.new_zeros((b * (total // k), units.shape[-1])).index_add_(0, group, units)
                match_groups = match_groups.view(b, total // k, units.shape[-1])
        return self.merge(padded, valid, live_groups), match_groups  # to_left_padded writes zeros, as merge needs

    def user_globals(self, x: DenseInputs) -> Tensor:
        """The candidate-independent global tokens [B, m - 1, D]: CLS..., user."""
        globals_ = [self.cls.unsqueeze(0).expand(x.lengths.shape[0], -1, -1)]
        if self.user_token is not None:
            globals_.append(self.user_token(torch.cat([x.user, x.dense], dim=-1)).unsqueeze(1))
        return torch.cat(globals_, dim=1)

    def candidate_similarity(self, match_groups: Tensor | None, candidates: Tensor) -> Tensor | None:
        """Similarity of candidates [B, C, D_cand] to each merged token [B, C, L', P] (None: off)."""
        if match_groups is None:
            return None
        return group_similarity(match_groups, unit_pairs(candidates, self.match_pairs, "candidate"),
                                self.match_pairs)

    def encode(self, x: DenseInputs) -> LongerStates:
        merged, num_pad, match_groups, host_groups = self.encode_sequence(x)
        candidate = self.candidate_token(x.candidate).unsqueeze(1)  # [B, 1, D]: the last token of the layout
        match = self.candidate_similarity(match_groups, x.candidate.unsqueeze(1))
        user_side, candidates, readout = self.attention(merged, self.user_globals(x), num_pad, candidate, match,
                                                        host_groups=host_groups)
        layers = [torch.cat([u, c], dim=1) for u, c in zip(user_side, candidates)]  # [B, k + m, D], candidate last
        return LongerStates(merged=merged, num_pad=num_pad, layers=layers,
                            match_readout=None if readout is None else readout.squeeze(1))

    def head_logits(self, x: DenseInputs, states: LongerStates) -> Tensor:
        final = states.layers[-1]  # [B, k_eff + m, D]
        k_eff = final.shape[1] - self.num_globals
        num_pad = self.attention.query_padding(states.num_pad, states.merged.shape[1])
        seq_mean = pool_queries(final[:, :k_eff], num_pad)
        return self.head_from_states(seq_mean, final[:, k_eff:], x.candidate, x.user, x.dense, states.match_readout)

    def head_from_states(
        self, seq_mean: Tensor, globals_: Tensor, candidate: Tensor, user: Tensor, dense: Tensor,
        match_readout: Tensor | None = None,
    ) -> Tensor:
        """Logits [B] from the pooled sequence-query states [B, D], the final global states [B, m, D], the
        candidate's match readout [B, H * P] (candidate match on) and the raw candidate / user / dense inputs."""
        features = [globals_.flatten(1), seq_mean, *([] if match_readout is None else [match_readout]),
                    candidate, user, dense]
        return self.head(torch.cat(features, dim=-1)).squeeze(-1)  # [B]

    def forward(self, x: DenseInputs) -> Tensor:
        """Logits [B]."""
        return self.head_logits(x, self.encode(x))

    @property
    def serving(self) -> ServingTraits:
        return ServingTraits(cached=True, appends=self.cfg.stream_tokens)

    def prefill(self, x: DenseInputs) -> UserState:
        """The user side of `x` (its `candidate` field is not read) run once (models/user_state.py): the hybrid
        attention over the sequence and the user-side globals, keeping each layer's keys and values (`k<i>`,
        `v<i>` [U, H, L_i, dh], `pad<i>` leading padded), the pooled sequence-query states, the user globals'
        final states and the head's raw user inputs; with the candidate match, the events' unit vectors summed
        per merged token (`match_groups`); with `model.stream_tokens`, the merged tokens (`merged`, for `append`)."""
        merged, num_pad, match_groups, host_groups = self.encode_sequence(x)  # [U, L', D]
        return self._user_state(x, merged, num_pad, match_groups, host_groups)

    def _user_state(
        self, x: DenseInputs, merged: Tensor, num_pad: Tensor, match_groups: Tensor | None,
        host_groups: Tensor | None, cross_kv: tuple[Tensor, Tensor] | None = None,
        layers: tuple[list[Tensor], list] | None = None,
    ) -> UserState:
        """`prefill`'s state from the merged tokens; `cross_kv`: the cross layer's keys and values when the caller
        has them, `layers`: each layer's output states and (K, V, num_pad) when the caller ran the layers itself
        (`append`)."""
        attention = self.attention
        if layers is None:
            kept: list = []
            states = attention(merged, self.user_globals(x), num_pad, keep_kv=kept, host_groups=host_groups,
                               cross_kv=cross_kv)[0]
        else:
            states, kept = layers
        k_eff = attention.effective_queries(merged.shape[1])
        q_pad = attention.query_padding(num_pad, merged.shape[1])
        tensors, padded = {}, {}
        for i, (k, v, pad) in enumerate(kept):
            tensors.update({f"k{i}": k, f"v{i}": v, f"pad{i}": pad})
            padded.update({f"k{i}": (2, f"pad{i}"), f"v{i}": (2, f"pad{i}")})
        final = states[-1]
        tensors.update(seq_mean=pool_queries(final[:, :k_eff], q_pad), user_globals=final[:, k_eff:], user=x.user,
                       dense=x.dense)
        if match_groups is not None:
            tensors["match_groups"], padded["match_groups"] = match_groups, (1, "pad0")
        if self.cfg.stream_tokens:
            tensors["merged"], padded["merged"] = merged, (1, "pad0")
        if self._keeps_outputs:  # each layer's states over [the k newest merged tokens | globals]
            for i, layer_states in enumerate(states):
                tensors[f"out{i}"], padded[f"out{i}"] = layer_states, (1, "qpad")
            tensors["qpad"] = q_pad
        return UserState(tensors, padded)

    @property
    def _keeps_outputs(self) -> bool:
        """Whether states keep every layer's outputs, with which `append` runs only the queries whose inputs
        changed (`HybridAttention.extend`: the recent rule, whose queries are the newest positions)."""
        return self.cfg.stream_tokens and self.cfg.query_selection == "recent"

    def append_start(self, covered: int) -> int:
        """The oldest event `append` reads of a history whose first `covered` events a state encodes: the first
        event of the newest merge group the state does not hold full (encoded again), less one (its predecessor,
        for its time since the previous event)."""
        return max(covered // self.cfg.merge_k * self.cfg.merge_k - 1, 0)

    def append(self, state: UserState, x: DenseInputs, covered: int) -> UserState:
        """The state `prefill` gives for a longer history, from one user's state of its first `covered` events
        (`split_users`; `model.stream_tokens`, under which no token depends on newer events or the request time).
        `x`: that user (one row) with the history's events from `append_start(covered)` on (x.lengths counts
        those), its request's user and dense features.

        Kept: the merged tokens whose K events the state holds all of, and their keys and values in the cross
        layer (what `prefill` spends most of its work on: the token MLP over every event, the keys and values of
        every merged token). Encoded: the newest unfilled group again and the new events, their merged tokens'
        keys and values, the user globals; then the layers' queries: under the recent rule only those whose
        inputs changed (`HybridAttention.extend`), under the other rules every query again."""
        if not self.cfg.stream_tokens:
            raise ValueError("Longer.append needs model.stream_tokens: the paper's tokens change with newer events")
        k = self.cfg.merge_k
        start = self.append_start(covered)
        kept = covered // k
        skip = kept * k - start  # 1: the predecessor, read for the time of the first event encoded again
        n = x.events.shape[0]
        if x.lengths.shape[0] != 1 or int(x.lengths[0]) != n or n - skip < 1:
            raise ValueError(f"Longer.append: one user with its events from {start} on and at least one after "
                             f"{covered}, got lengths {x.lengths.tolist()}")
        time, position = event_time_position(x.time_diff, x.lengths, event_rows(x.lengths, n), True)
        events, time, position = x.events[skip:], time[skip:], position[skip:] + start
        new = torch.tensor([n - skip], device=x.lengths.device)  # events encoded: the unfilled group's, the new ones
        groups = -(-(n - skip) // k)
        units = unit_pairs(events, self.match_pairs, "event") if self.match_pairs else None
        slots, trailing = stream_slots(new, event_rows(new, n - skip), k)
        merged_new, match_new = self._merge_groups(self.tokens(events, time, position), units, new, slots, trailing,
                                                   groups * k, groups, full=False)  # [1, groups, D]
        merged = torch.cat([state["merged"][:, :kept], merged_new], dim=1)
        match_groups = None if units is None else torch.cat([state["match_groups"][:, :kept], match_new], dim=1)
        cross = self.attention.cross
        fresh = torch.cat([merged_new, self.user_globals(x)], dim=1)  # the cross layer's new keys: [new | globals]
        k_new, v_new = cross._keys_values(cross.norm1(fresh), fresh.shape[:2], None)
        cross_kv = (torch.cat([state["k0"][:, :, :kept], k_new], dim=2),
                    torch.cat([state["v0"][:, :, :kept], v_new], dim=2))
        num_pad = torch.zeros(1, dtype=torch.long, device=merged.device)
        host_groups = torch.tensor([merged.shape[1]])
        layers = None
        if self._keeps_outputs:
            old_len = -(-covered // k)  # the merged tokens the state holds, the last maybe unfilled
            outputs = [state[f"out{i}"] for i in range(1 + len(self.attention.self_layers))]
            kv = [(state[f"k{i}"], state[f"v{i}"]) for i in range(1, 1 + len(self.attention.self_layers))]
            layers = self.attention.extend(merged, self.user_globals(x), cross_kv, outputs, kv, kept, old_len)
        return self._user_state(x, merged, num_pad, match_groups, host_groups, cross_kv, layers)

    def score(self, state: UserState, candidates: Tensor) -> Tensor:
        """Logits [U, C] of candidates [U, C, D_cand] against `prefill`'s state: per layer, each candidate's row
        against its user's keys and values and its own (the code training runs for the candidate row)."""
        u, c = candidates.shape[:2]
        token = self.candidate_token(candidates)  # [U, C, D]
        match = self.candidate_similarity(state.tensors.get("match_groups"), candidates)  # [U, C, L', P] or None
        readout = None
        for i, layer in enumerate([self.attention.cross, *self.attention.self_layers]):
            # the cross-causal layer (first) takes the candidate match and gives the readout
            token, out = layer.candidate_rows(token, state[f"k{i}"], state[f"v{i}"], state[f"pad{i}"],
                                              match if i == 0 else None)
            readout = out if i == 0 else readout
        width = token.shape[-1]
        user_globals = state["user_globals"]
        globals_ = torch.cat([user_globals.unsqueeze(1).expand(u, c, *user_globals.shape[1:]), token.unsqueeze(2)],
                             dim=2)
        repeat = lambda t: t.unsqueeze(1).expand(u, c, t.shape[-1]).reshape(u * c, t.shape[-1])
        logits = self.head_from_states(
            repeat(state["seq_mean"]), globals_.reshape(u * c, -1, width), candidates.reshape(u * c, -1),
            repeat(state["user"]), repeat(state["dense"]), None if readout is None else readout.reshape(u * c, -1),
        )
        return logits.view(u, c)

    def flops(self, lengths: list[int]) -> int:
        """Forward FLOPs of a batch with these history lengths (models/flops.py)."""
        return longer_flops(self.cfg, self.dims, lengths)

    def compute_units(self) -> ComputeUnits:
        """What the compute policies act on (models/units.py)."""
        inner = [] if self.merge.inner is None else [self.merge.inner]
        blocks = [*inner, self.attention.cross, *self.attention.self_layers]
        return ComputeUnits(
            tokens=[self.tokens, self.candidate_token, *([] if self.user_token is None else [self.user_token])],
            attention=blocks, ffn=[block.ffn for block in blocks], head=[self.head], shard=blocks,
            recompute={"inner_trans": inner, "cross": [self.attention.cross], "self": list(self.attention.self_layers)},
        )
