"""Readable PyTorch references for LONGER's attention ops (CPU path and test oracle).

Conventions shared with the fast kernels:
- sequences are left-padded: sample b has `num_pad[b]` invalid positions at the front of the key axis;
- hybrid (causal) attention aligns queries bottom-right: the Lq queries are the last Lq key positions,
  and query i (key position Lk - Lq + i) sees keys j <= that position and j >= num_pad[b]; the reference
  also takes per-row query positions (`q_pos`), for queries gathered from anywhere in the sequence;
- a query that is itself padding has no valid key; its output is defined as 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _masked_softmax_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, q_valid: Tensor) -> Tensor:
    # q [B, H, Lq, dh], k/v [B, H, Lk, dh], allowed [B, Lq, Lk] bool, q_valid [B, Lq] bool
    # the scale applied to q ([.., Lq, dh]), not to the scores ([.., Lq, Lk]), and the mask filled in place
    # (the matmul does not keep its output for backward): one pass fewer over the scores each, forward and
    # backward — with few queries over many keys (the cross-causal layer) the scores dominate the traffic
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-1, -2))  # [B, H, Lq, Lk]
    # padded queries get one allowed key so the softmax stays finite; their output is zeroed below
    allowed = allowed | ~q_valid[:, :, None]
    scores = scores.masked_fill_(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)  # [B, H, Lq, dh]
    return out * q_valid[:, None, :, None].to(out.dtype)


def hybrid_attention_reference(q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, q_pos: Tensor | None = None) -> Tensor:
    """Causal attention of Lq queries over all Lk positions, with left padding.

    q: [B, H, Lq, dh]; k, v: [B, H, Lk, dh]; num_pad: [B] int (leading invalid key positions).
    q_pos: [B, Lq] int, the key position each query sits at (it sees keys j <= q_pos and j >= num_pad; it is
    padding if q_pos < num_pad); None = the last Lq positions (bottom-right aligned), i.e. Lk - Lq + i.
    Returns [B, H, Lq, dh].
    """
    return _masked_softmax_attention(q, k, v, *hybrid_mask(num_pad, q.shape[2], k.shape[2], q_pos, q.device))


def hybrid_mask(num_pad: Tensor, lq: int, lk: int, q_pos: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """The keys each query of `hybrid_attention_reference` may see, [B, Lq, Lk] bool, and which queries are
    not padding, [B, Lq] bool."""
    kpos = torch.arange(lk, device=device)
    q_pos = kpos[None, lk - lq :] if q_pos is None else q_pos.to(device)  # [B or 1, Lq]
    num_pad = num_pad.to(device)
    key_valid = kpos[None, :] >= num_pad[:, None]  # [B, Lk]
    causal = kpos[None, None, :] <= q_pos[:, :, None]  # [B or 1, Lq, Lk]
    allowed = causal & key_valid[:, None, :]  # [B, Lq, Lk]
    q_valid = q_pos >= num_pad[:, None]  # [B, Lq]
    return allowed, q_valid


def candidate_attention_reference(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, num_pad: Tensor, k_self: Tensor, v_self: Tensor,
    bias: Tensor | None = None, return_probs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Each candidate query attends to its user's cached keys plus its own key (KV-cached scoring).

    q, k_self, v_self: [U, H, C, dh] (C candidates per user, independent of each other);
    k_cache, v_cache: [U, H, Lk, dh] with num_pad [U] leading padded keys. Returns [U, H, C, dh].
    Equal to the last row of `hybrid_attention_reference` over [cache; candidate] for every candidate.
    `bias` [U, H, C, Lk] is added to the scores of the cached keys (the candidate's similarity to them,
    models/candidate_match.py); `return_probs` also returns the attention probabilities of the cached keys
    [U, H, C, Lk] (fp32).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    lk = k_cache.shape[2]
    key_valid = torch.arange(lk, device=q.device)[None, :] >= num_pad.to(q.device)[:, None]  # [U, Lk]
    cached = torch.matmul(q, k_cache.transpose(-1, -2)).float() * scale  # [U, H, C, Lk]
    if bias is not None:
        cached = cached + bias.float()
    cached = cached.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    own = (q * k_self).sum(-1, keepdim=True).float() * scale  # [U, H, C, 1]
    top = torch.maximum(cached.amax(-1, keepdim=True), own)
    p_cached, p_own = torch.exp(cached - top), torch.exp(own - top)
    denom = p_cached.sum(-1, keepdim=True) + p_own
    out = torch.matmul(p_cached.to(v_cache.dtype), v_cache) + p_own.to(v_self.dtype) * v_self
    out = out / denom.to(out.dtype)
    return (out, p_cached / denom) if return_probs else out


def group_attention_reference(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """Full (non-causal) attention inside groups of K tokens, used by InnerTrans token merge.

    q, k, v: [G, H, K, dh] (G = batch * groups); valid: [G, K] bool. Invalid keys are ignored, invalid
    queries output 0. Returns [G, H, K, dh].
    """
    return _masked_softmax_attention(q, k, v, *group_mask(valid))


def group_mask(valid: Tensor) -> tuple[Tensor, Tensor]:
    """The keys each query of `group_attention_reference` may see, [G, K, K], and the valid queries [G, K]."""
    return valid[:, None, :].expand(-1, valid.shape[1], -1), valid
