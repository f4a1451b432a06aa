"""Token merge: K adjacent behaviour tokens -> one token of width K*d (`concat`), optionally after a small
transformer block inside each group (`inner_trans`). The paper's groups are aligned to the newest event: the
input is left-padded to a multiple of K, so only the oldest group can be partly padding. With
`model.stream_tokens` they are aligned to the oldest event (`to_left_padded`'s `trailing`): only the newest group
can be partly padding, at its end, so newer events never regroup older ones (docs/serving.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import group_attention
from .blocks import FeedForward, make_norm, merge_heads, split_heads
from .inputs import event_rows


class InnerTransBlock(nn.Module):
    """Pre-norm transformer block over the K tokens of each group (bidirectional, padding masked)."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, norm: str, attention_impl: str) -> None:
        super().__init__()
        self.heads = heads
        self.attention_impl = attention_impl
        self.norm1 = make_norm(norm, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = make_norm(norm, dim)
        self.ffn = FeedForward(dim, ffn_mult)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        # x [G, K, d], valid [G, K]
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attn = group_attention(
            split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads),
            valid, impl=self.attention_impl,
        )
        x = x + self.out(merge_heads(attn))
        x = x + self.ffn(self.norm2(x))
        return x * valid[..., None].to(x.dtype)


class TokenMerge(nn.Module):
    """[B, L, d] left-padded tokens (L a multiple of K) -> [B, L/K, width] merged tokens."""

    def __init__(
        self, mode: str, k: int, token_dim: int, proj_dim: int | None, heads: int, ffn_mult: int,
        norm: str, attention_impl: str,
    ) -> None:
        super().__init__()
        if mode not in ("concat", "inner_trans"):
            raise ValueError(f"unknown merge mode {mode!r}; expected 'concat' or 'inner_trans'")
        self.k = k
        self.inner = (
            InnerTransBlock(token_dim, heads, ffn_mult, norm, attention_impl) if mode == "inner_trans" else None
        )
        self.proj = nn.Linear(k * token_dim, proj_dim) if proj_dim else None
        self.out_dim = proj_dim or k * token_dim

    def forward(self, tokens: Tensor, valid: Tensor | None, live_groups: int | None = None) -> Tensor:
        """tokens [B, L, d] whose padded positions hold 0 (as `to_left_padded` writes them: concat passes them
        through, so a merged token's padded slots stay 0; InnerTrans masks them), valid [B, L] (None: every
        position holds an event). `live_groups`: how many groups hold an event (the sum over rows of
        ceil(length / K)), when the caller knows it; InnerTrans then runs on those groups only. None runs it on
        every group (the same result): for programs whose shapes must not depend on the data (torch.export)."""
        b, length, d = tokens.shape
        groups = length // self.k
        if self.inner is not None:
            if valid is None:
                valid = torch.ones(b, length, dtype=torch.bool, device=tokens.device)
            tokens = self._inner_trans(tokens.reshape(b * groups, self.k, d), valid.reshape(b * groups, self.k),
                                       live_groups).reshape(b, length, d)
        merged = tokens.reshape(b, groups, self.k * d)  # [B, L', K*d]
        if self.proj is not None:
            merged = self.proj(merged)
        return merged

    def _inner_trans(self, groups: Tensor, valid: Tensor, live_groups: int | None) -> Tensor:
        """InnerTrans over [G, K, d] groups. A batch is padded to its longest history, so with ragged lengths
        most groups can be all padding; only the groups holding an event go through the block (the others
        are 0 either way, as the block zeroes padded tokens), so padding costs no compute. The count is
        known, so finding them needs no host sync (nonzero_static)."""
        if live_groups is None or live_groups == groups.shape[0]:
            return self.inner(groups, valid)
        live = torch.nonzero_static(valid.any(1), size=live_groups).squeeze(1)
        out = self.inner(groups.index_select(0, live), valid.index_select(0, live))
        return groups.new_zeros(groups.shape).index_copy(0, live, out)


def to_left_padded(
    values: Tensor, lengths: Tensor, total: int, rows: tuple[Tensor, Tensor] | None = None,
    trailing: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Packed rows [N, d] (row-major, oldest first) -> ([B, total, d] left-padded, newest last; [B, total] valid).

    Padding is exactly zero. Row b's event j lands at position total - lengths[b] + j = total - 1 - its
    recency. `rows`: the events' (row, recency) from `inputs.event_rows`, when the caller has them already.
    `trailing` [B]: padded positions after each row's newest event (the stream layout's unfilled end of the
    newest merge group); `rows`' recency then counts them (`stream_slots`).
    """
    b = lengths.shape[0]
    row, recency = event_rows(lengths, values.shape[0]) if rows is None else rows
    # in place into the fresh zeros: the out-of-place index_put would copy the whole padded tensor once more
    out = values.new_zeros((b, total, values.shape[-1])).index_put_((row, total - 1 - recency), values)
    position = torch.arange(total, device=values.device)[None, :]
    end = total if trailing is None else (total - trailing)[:, None]
    valid = (position >= end - lengths[:, None]) & (position < end)
    return out, valid


def stream_slots(lengths: Tensor, rows: tuple[Tensor, Tensor], k: int) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """Merge groups aligned to each row's oldest event (`model.stream_tokens`): the events' (row, slot) with slot
    the recency counted from the end of the row's last group, and the unfilled slots of that group per row [B]
    (`to_left_padded`'s `trailing`)."""
    lengths = lengths.long()
    trailing = torch.remainder(-lengths, k)
    row, recency = rows
    return (row, recency + trailing[row]), trailing
