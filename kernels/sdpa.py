"""`model.attention_impl=sdpa`: PyTorch's fused attention (`F.scaled_dot_product_attention`), computing what the
reference computes (padding and causality masked, padded queries output 0) without an L x L mask where the
layout allows one of SDPA's causal modes, so that its flash kernels skip the masked blocks:

- hybrid attention with the queries at the last positions (bottom-right aligned) and no padded row: `is_causal`
  when every position is a query (self-causal layers, the Transformer baseline), else lower-right causal
  attention (LONGER's cross layer: Lq = k + m queries; CUDA runs torch's lower-right causal bias in its flash
  kernel, the CPU an [Lq, Lk] mask shared by the batch, as torch itself does there);
- every position a query and padded rows: each row rotated so that its padding comes last. Causal attention is
  then exact for the valid positions (they come first and see only valid keys), `is_causal` runs unmasked, and
  the outputs are rotated back (padded queries output 0);
- otherwise (padded rows with fewer queries than keys, gathered query positions, InnerTrans groups, and
  under torch.compile, where whether a row is padded is not read) the reference's exact boolean mask
  (`reference.hybrid_mask`, `reference.group_mask`) as `attn_mask`: [B, 1, Lq, Lk].

Which of these a call takes depends on whether any row is padded, read from `num_pad` on the host (a device
sync on CUDA). The candidate row with the match bias stays on the reference.

Importing this module also gives torch's FlopCounterMode the CPU flash kernel, which it does not count by
itself (it counts CUDA's): the same formulas, every (query, key) pair as for CUDA and as models/flops.py counts,
so that the models' FLOP checks and the sweeps' counted FLOPs see attention on CPU too."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right
from torch.utils import flop_counter

from .reference import group_mask, hybrid_mask

for _op, _formula in ((torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, flop_counter.sdpa_flop),
                      (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward,
                       flop_counter.sdpa_backward_flop)):
    if _op not in flop_counter.flop_registry:  # a later torch may count it itself
        flop_counter.register_flop_formula(_op, get_raw=True)(_formula)  # _formula takes tensors already


def _masked_sdpa(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, q_valid: Tensor) -> Tensor:
    # a padded query may see every key (a finite softmax); its output is zeroed, as in the reference
    mask = (allowed | ~q_valid[:, :, None])[:, None]  # [B, 1, Lq, Lk]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out * q_valid[:, None, :, None].to(out.dtype)


def _rotated(x: Tensor, shift: Tensor) -> Tensor:
    """Row b of x [B, H, L, dh] rotated left by shift[b] positions: out[b, :, i] = x[b, :, (i + shift[b]) % L].
    One index_select of whole rows (a token's H * dh values where the heads lie side by side, as split_heads leaves
    a projection, else a head's dh), several times faster on CPU than a gather of single elements."""
    b, h, length, dh = x.shape
    source = (torch.arange(length, device=x.device)[None, :] + shift[:, None]) % length  # [B, L]
    if x.stride(1) == dh and x.stride(3) == 1:  # token-major: [B, L, H * dh] rows
        rows = torch.arange(b, device=x.device)[:, None] * length + source
        tokens = x.transpose(1, 2).reshape(b * length, h * dh).index_select(0, rows.flatten())
        return tokens.view(b, length, h, dh).transpose(1, 2)
    rows = torch.arange(b * h, device=x.device).view(b, h, 1) * length + source[:, None, :]  # head-major
    return x.reshape(b * h * length, dh).index_select(0, rows.flatten()).view(b, h, length, dh)


class _Rotate(torch.autograd.Function):
    """`_rotated` whose gradient is the rotation back (autograd's own backward of a row selection adds the rows
    into zeros)."""

    @staticmethod
    def forward(ctx, x: Tensor, shift: Tensor) -> Tensor:
        ctx.save_for_backward(shift)
        return _rotated(x, shift)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (shift,) = ctx.saved_tensors
        return _rotated(grad, -shift), None


def _causal_padding_last(q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor) -> Tensor:
    """Causal self-attention (Lq = Lk) of left-padded rows, exact without a mask: each row's padding rotated to
    its end, `is_causal`, rotated back; padded queries output 0."""
    num_pad = num_pad.to(q.device).long()
    out = F.scaled_dot_product_attention(*(_Rotate.apply(t, num_pad) for t in (q, k, v)), is_causal=True)
    out = _Rotate.apply(out, -num_pad)
    q_valid = torch.arange(q.shape[2], device=q.device)[None, :] >= num_pad[:, None]  # [B, Lq]
    return out * q_valid[:, None, :, None].to(out.dtype)


def _lower_right_causal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of the Lq queries at the last of the Lk key positions, no padding. CUDA: torch's
    lower-right causal bias (its flash kernel takes it unmasked); CPU: the [Lq, Lk] mask that bias materialises
    there, built here (a bias object cannot be built under a dispatch mode such as FlopCounterMode)."""
    lq, lk = q.shape[2], k.shape[2]
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(lq, lk))
    mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)  # shared by the batch and heads
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def hybrid_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, q_pos: Tensor | None = None) -> Tensor:
    """`reference.hybrid_attention_reference` through SDPA (see the module's docstring for the paths)."""
    lq, lk = q.shape[2], k.shape[2]
    if q_pos is None and not torch.compiler.is_compiling():
        if not bool(num_pad.any()):
            if lq == lk:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return _lower_right_causal(q, k, v)
        if lq == lk:
            return _causal_padding_last(q, k, v, num_pad)
    return _masked_sdpa(q, k, v, *hybrid_mask(num_pad, lq, lk, q_pos, q.device))


def group_attention_sdpa(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """`reference.group_attention_reference` through SDPA."""
    return _masked_sdpa(q, k, v, *group_mask(valid))
