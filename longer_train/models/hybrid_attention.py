"""LONGER's hybrid attention layers.

Layout: [merged sequence tokens (oldest..newest, left-padded) | CLS | user | candidate]. The ordinary causal
mask over that layout is the paper's mask: sequence tokens see only older ones, user-side globals see the
whole sequence but not the candidate, the candidate sees everything — so every sequence-side and user-side
state is candidate-independent (what makes KV-cached serving exact).

- `CausalBlock(cross=True)`: keys/values are all tokens, queries the last n_q (the k most recent merged
  tokens + the m globals); output n_q tokens.
- `CausalBlock(cross=False)`: self-causal over those n_q tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..kernels import candidate_attention, hybrid_attention
from .blocks import FeedForward, make_norm, merge_heads, split_heads
from .candidate_match import attended_similarity, match_bias, match_weight


class CausalBlock(nn.Module):
    """Pre-norm attention + FFN with residuals; queries are the last `n_q` positions of the input."""

    def __init__(self, dim: int, head_dim: int, ffn_mult: int, norm: str, dropout: float, attention_impl: str) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.attention_impl = attention_impl
        self.norm1 = make_norm(norm, dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = make_norm(norm, dim)
        self.ffn = FeedForward(dim, ffn_mult, dropout)
        self.dropout = nn.Dropout(dropout)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of tokens [B, L, D] -> two [B, H, L, dh] (what a KV cache keeps)."""
        k, v = self.kv(self.norm1(x)).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def queries(self, x: Tensor) -> Tensor:
        """Queries of tokens [B, L, D] -> [B, H, L, dh]."""
        return split_heads(self.q(self.norm1(x)), self.heads)

    def finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual + FFN after attention: query tokens [B, n, D], attention output [B, H, n, dh]."""
        y = x + self.dropout(self.out(merge_heads(attn)))
        return y + self.ffn(self.norm2(y))

    def forward(self, x: Tensor, num_pad: Tensor, n_q: int) -> Tensor:
        # x [B, Lk, D]; num_pad [B] leading padded positions; returns [B, n_q, D]
        k, v = self.keys_values(x)
        x_q = x[:, x.shape[1] - n_q :]
        attn = hybrid_attention(self.queries(x_q), k, v, num_pad, impl=self.attention_impl)  # [B, H, n_q, dh]
        return self.finish(x_q, attn)


class HybridAttention(nn.Module):
    """Layer 1 cross-causal (k recent merged tokens + m globals as queries), then N self-causal layers.

    With `match_pairs` > 0 the candidate's row of the cross-causal layer also scores each merged token by the
    candidate's similarity to its events in the shared embedding space (models/candidate_match.py): a learned
    weight per head and pair, added to the attention score; the similarity the candidate attended to (per
    head and pair) is returned for the head (`readout`). Only the candidate's own row changes, so every
    sequence-side and user-side state stays candidate-independent."""

    def __init__(
        self, dim: int, num_queries: int, num_self_layers: int, head_dim: int, ffn_mult: int, norm: str,
        dropout: float, attention_impl: str, match_pairs: int = 0, match_readout: bool = True,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.attention_impl = attention_impl
        make = lambda: CausalBlock(dim, head_dim, ffn_mult, norm, dropout, attention_impl)
        self.cross = make()
        self.self_layers = nn.ModuleList(make() for _ in range(num_self_layers))
        self.match_weight = match_weight(self.cross.heads, match_pairs) if match_pairs else None
        self.match_readout = match_readout

    def forward(
        self, seq: Tensor, globals_: Tensor, num_pad: Tensor, match: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor | None]:
        """seq [B, L', D] left-padded merged tokens with `num_pad` [B] padded ones; globals_ [B, m, D], the
        candidate last; match [B, 1, L', P]: the candidate's similarity to each merged token (None: off).

        Returns the states after each layer, [B, n_q, D] with n_q = min(k, L') + m (queries at the end), and
        the candidate's match readout [B, 1, H * P] (None when `match` is None or the readout is off).
        """
        seq_len, m = seq.shape[1], globals_.shape[1]
        k = self.effective_queries(seq_len)
        tokens = torch.cat([seq, globals_], dim=1)
        readout = None
        if match is None:
            x = self.cross(tokens, num_pad, k + m)
        else:  # the user-side rows as usual; the candidate's row with the match bias
            layer = self.cross
            keys, values = layer.keys_values(tokens)
            x_q = tokens[:, tokens.shape[1] - (k + m):]
            q = layer.queries(x_q)
            user_rows = hybrid_attention(q[:, :, :-1], keys[:, :, :-1], values[:, :, :-1], num_pad,
                                         impl=self.attention_impl)
            candidate, readout = self.candidate_row(q[:, :, -1:], keys[:, :, :-1], values[:, :, :-1], num_pad,
                                                    keys[:, :, -1:], values[:, :, -1:], match)
            x = layer.finish(x_q, torch.cat([user_rows, candidate], dim=2))
        num_pad = query_padding(num_pad, seq_len, k)
        states = [x]
        for layer in self.self_layers:
            x = layer(x, num_pad, x.shape[1])
            states.append(x)
        return states, readout

    def candidate_row(
        self, q: Tensor, k_cache: Tensor, v_cache: Tensor, num_pad: Tensor, k_self: Tensor, v_self: Tensor,
        match: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Cross-causal attention of C candidates per row with the match bias (training and KV-cached scoring
        share it). q, k_self, v_self [B, H, C, dh]; k_cache, v_cache [B, H, Lk, dh]: the L' merged tokens then
        the user globals; match [B, C, L', P]. Returns the attention output [B, H, C, dh] and the readout
        [B, C, H * P]: per head and pair, the similarity weighted by the candidate's attention (None when off)."""
        seq_len = match.shape[2]
        bias = match_bias(match, self.match_weight).permute(0, 3, 1, 2)  # [B, H, C, L']
        bias = torch.nn.functional.pad(bias, (0, k_cache.shape[2] - seq_len))  # the user globals: no bias
        if not self.match_readout:
            return candidate_attention(q, k_cache, v_cache, num_pad, k_self, v_self, self.attention_impl,
                                       bias=bias), None
        out, probs = candidate_attention(q, k_cache, v_cache, num_pad, k_self, v_self, self.attention_impl,
                                         bias=bias, return_probs=True)
        return out, attended_similarity(probs[..., :seq_len], match)

    def effective_queries(self, seq_len: int) -> int:
        """k actually used for a batch whose merged sequences have length seq_len."""
        return min(self.num_queries, seq_len)


def query_padding(num_pad: Tensor, seq_len: int, k: int) -> Tensor:
    """Padded tokens among the k sequence queries (the last k of seq_len merged tokens, num_pad padded)."""
    return (num_pad - (seq_len - k)).clamp(min=0)

