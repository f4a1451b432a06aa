"""`model.attention_impl=sdpa`: PyTorch's fused attention (`F.scaled_dot_product_attention`) with the
reference's exact masks (`reference.hybrid_mask`, `reference.group_mask`) as a boolean `attn_mask`, so it
computes what the reference computes (padding and causality masked, padded queries output 0) with whatever
fused kernel torch picks for a masked call on the device (CPU: its flash kernel; CUDA: memory-efficient
attention — flash takes no mask). The candidate row with the match bias stays on the reference."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .reference import group_mask, hybrid_mask


def _masked_sdpa(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, q_valid: Tensor) -> Tensor:
    # a padded query may see every key (a finite softmax); its output is zeroed, as in the reference
    mask = (allowed | ~q_valid[:, :, None])[:, None]  # [B, 1, Lq, Lk]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out * q_valid[:, None, :, None].to(out.dtype)


def hybrid_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, q_pos: Tensor | None = None) -> Tensor:
    """`reference.hybrid_attention_reference` through SDPA."""
    return _masked_sdpa(q, k, v, *hybrid_mask(num_pad, q.shape[2], k.shape[2], q_pos, q.device))


def group_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """`reference.group_attention_reference` through SDPA."""
    return _masked_sdpa(q, k, v, *group_mask(valid))
