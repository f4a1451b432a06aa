"""Triton kernel for the attention inside groups of K tokens (InnerTrans token merge), forward and backward.

What is fused: QK^T, the padding mask, the softmax, P·V and the head merge. The kernel reads q, k, v
wherever they lie (the model passes strided head views of its qkv projection, so no split/copy happens)
and writes the output in [G, K, H, dh] memory order, returned as the [G, H, K, dh] view the dispatcher
promises. That memory is already the merged layout: `merge_heads` gives [G, K, d] without a copy, and
[G, K, d] is byte-for-byte [B, L/K, K*d], the merged-token layout TokenMerge hands on. The output
projection, residual and FFN of the InnerTrans block stay in PyTorch (dense GEMMs cuBLAS already does well).

One program handles BLOCK_R // K whole groups as a BLOCK_R-row tile with a block-diagonal mask: K is
4..16, too small for a tensor-core tile by itself, and the op is memory-bound anyway (the wasted
multiplies are free). The whole softmax row fits in the tile, so there is no online softmax, and the
backward recomputes P and produces dq, dk, dv of those groups in the same program (no atomics).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .tile_ops import LOG2E, Launcher, dot


@triton.jit
def _group_tile(base, group, token, row_ok, stride_g, stride_t, offs_d, HEAD_DIM: tl.constexpr):
    """[BLOCK_R, BLOCK_D] rows (group, token) of one head; rows not ok (padding tokens, past the last group)
    and columns past dh read 0, so padding is never read whatever it holds."""
    ptrs = base + group[:, None] * stride_g + token[:, None] * stride_t + offs_d[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def _group_probs(q, k, group, valid, qk_scale, WIDEN_DOT: tl.constexpr):
    """Softmax over the valid keys of each query's own group: [R, R]; rows of invalid queries are 0."""
    s = dot(q, tl.trans(k), WIDEN_DOT) * qk_scale  # base-2 logits
    allowed = (group[:, None] == group[None, :]) & valid[None, :] & valid[:, None]
    s = tl.where(allowed, s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.math.exp2(s - tl.where(m == float("-inf"), 0.0, m)[:, None])
    denom = tl.sum(p, 1)
    return p / tl.where(denom > 0.0, denom, 1.0)[:, None]


@triton.jit
def _group_rows(Valid, num_groups, GROUP_SIZE: tl.constexpr, BLOCK_R: tl.constexpr):
    """For each row of this program's tile: its group, its token in the group, whether the group exists
    and whether the token is valid."""
    rows = tl.arange(0, BLOCK_R)
    group = tl.program_id(0).to(tl.int64) * (BLOCK_R // GROUP_SIZE) + rows // GROUP_SIZE  # G * stride > 2**31
    token = rows % GROUP_SIZE
    in_range = group < num_groups
    valid = tl.load(Valid + group * GROUP_SIZE + token, mask=in_range, other=0) != 0
    return group, token, in_range, valid


@triton.jit
def _group_attention_probs(
    Q, K, V, Valid, h, stride_qg, stride_qh, stride_qt, stride_kg, stride_kh, stride_kt, stride_vg, stride_vh,
    stride_vt, num_groups, qk_scale, GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr, WIDEN_DOT: tl.constexpr,
):
    """What forward and backward both start from: this tile's rows, head h's q, k, v tiles and the
    in-group softmax probabilities."""
    group, token, in_range, valid = _group_rows(Valid, num_groups, GROUP_SIZE, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    q = _group_tile(Q + h * stride_qh, group, token, valid, stride_qg, stride_qt, offs_d, HEAD_DIM)
    k = _group_tile(K + h * stride_kh, group, token, valid, stride_kg, stride_kt, offs_d, HEAD_DIM)
    v = _group_tile(V + h * stride_vh, group, token, valid, stride_vg, stride_vt, offs_d, HEAD_DIM)
    p = _group_probs(q, k, group, valid, qk_scale, WIDEN_DOT)
    return group, token, in_range, valid, offs_d, q, k, v, p


@triton.jit(do_not_specialize=["num_groups"])
def _group_fwd_kernel(
    Q, K, V, Valid, Out,
    stride_qg, stride_qh, stride_qt, stride_kg, stride_kh, stride_kt, stride_vg, stride_vh, stride_vt,
    stride_og, stride_oh, stride_ot, num_groups, qk_scale,
    GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
):
    h = tl.program_id(1)
    group, token, in_range, valid, offs_d, q, k, v, p = _group_attention_probs(
        Q, K, V, Valid, h, stride_qg, stride_qh, stride_qt, stride_kg, stride_kh, stride_kt, stride_vg, stride_vh,
        stride_vt, num_groups, qk_scale, GROUP_SIZE, HEAD_DIM, BLOCK_D, BLOCK_R, WIDEN_DOT,
    )
    out = dot(p.to(v.dtype), v, WIDEN_DOT)
    ptrs = Out + h * stride_oh + group[:, None] * stride_og + token[:, None] * stride_ot + offs_d[None, :]
    tl.store(ptrs, out.to(Out.dtype.element_ty), mask=in_range[:, None] & (offs_d[None, :] < HEAD_DIM))


@triton.jit(do_not_specialize=["num_groups"])
def _group_bwd_kernel(
    Q, K, V, Valid, DO, DQ, DK, DV,
    stride_qg, stride_qh, stride_qt, stride_kg, stride_kh, stride_kt, stride_vg, stride_vh, stride_vt,
    stride_dog, stride_doh, stride_dot, stride_gg, stride_gh, stride_gt,  # DO; DQ/DK/DV share one layout
    num_groups, qk_scale, sm_scale,
    GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
):
    h = tl.program_id(1)
    group, token, in_range, valid, offs_d, q, k, v, p = _group_attention_probs(
        Q, K, V, Valid, h, stride_qg, stride_qh, stride_qt, stride_kg, stride_kh, stride_kt, stride_vg, stride_vh,
        stride_vt, num_groups, qk_scale, GROUP_SIZE, HEAD_DIM, BLOCK_D, BLOCK_R, WIDEN_DOT,
    )  # p: [R, R]
    do = _group_tile(DO + h * stride_doh, group, token, valid, stride_dog, stride_dot, offs_d, HEAD_DIM)
    dv = dot(tl.trans(p.to(do.dtype)), do, WIDEN_DOT)
    dp = dot(do, tl.trans(v), WIDEN_DOT)
    ds = p * (dp - tl.sum(p * dp, 1)[:, None])  # softmax backward; sum(p * dp) = rowsum(dO * O)
    dq = dot(ds.to(k.dtype), k, WIDEN_DOT) * sm_scale
    dk = dot(tl.trans(ds.to(q.dtype)), q, WIDEN_DOT) * sm_scale

    offsets = h * stride_gh + group[:, None] * stride_gg + token[:, None] * stride_gt + offs_d[None, :]
    mask = in_range[:, None] & (offs_d[None, :] < HEAD_DIM)
    tl.store(DQ + offsets, dq.to(DQ.dtype.element_ty), mask=mask)
    tl.store(DK + offsets, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + offsets, dv.to(DV.dtype.element_ty), mask=mask)


MAX_GROUP_SIZE = 64
# sm_90 configs (the first is the default without autotuning)
_CONFIGS = [triton.Config({"BLOCK_R": r}, num_warps=w) for r, w in ((64, 4), (128, 4), (64, 2))]
_CPU_TILE = {"BLOCK_R": MAX_GROUP_SIZE}  # interpreter (tests): one tile, at least one group
_fwd = Launcher(_group_fwd_kernel, _CONFIGS, ["GROUP_SIZE", "HEAD_DIM"], _CPU_TILE)
_bwd = Launcher(_group_bwd_kernel, _CONFIGS, ["GROUP_SIZE", "HEAD_DIM"], _CPU_TILE)


def unsupported_reason(group_size: int) -> str | None:
    """Why the kernel cannot take groups of this size (None: it can)."""
    if group_size & (group_size - 1) or group_size > MAX_GROUP_SIZE:
        return f"triton group attention needs K (model.merge_k) a power of two <= {MAX_GROUP_SIZE}, got {group_size}"
    return None


def _grid(num_groups: int, group_size: int, heads: int):
    return lambda meta: (triton.cdiv(num_groups, meta["BLOCK_R"] // group_size), heads)


def _merged_layout_like(x: Tensor) -> Tensor:
    """Empty [G, H, K, dh] view of [G, K, H, dh] memory (the merged-token layout)."""
    g, h, k, dh = x.shape
    return x.new_empty((g, k, h, dh)).transpose(1, 2)


class GroupAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
        g, h, group_size, dh = q.shape
        if reason := unsupported_reason(group_size):
            raise ValueError(reason)
        if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
            raise ValueError("triton group attention needs the head dimension contiguous (stride 1)")
        valid = valid.to(device=q.device, dtype=torch.int8).contiguous()  # [G, K]
        out = _merged_layout_like(q)
        constexprs = {"GROUP_SIZE": group_size, "HEAD_DIM": dh, "BLOCK_D": max(16, triton.next_power_of_2(dh))}
        if g:
            _fwd(
                _grid(g, group_size, h),
                q, k, v, valid, out, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
                g, LOG2E / math.sqrt(dh), **constexprs,
            )
        ctx.save_for_backward(q, k, v, valid)
        ctx.constexprs = constexprs
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v, valid = ctx.saved_tensors
        g, h, group_size, dh = q.shape
        d_out = d_out if d_out.stride(-1) == 1 else d_out.contiguous()
        dq, dk, dv = _merged_layout_like(q), _merged_layout_like(q), _merged_layout_like(q)
        if g:
            _bwd(
                _grid(g, group_size, h),
                q, k, v, valid, d_out, dq, dk, dv, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
                *d_out.stride()[:3], *dq.stride()[:3], g, LOG2E / math.sqrt(dh), 1.0 / math.sqrt(dh),
                **ctx.constexprs,
            )
        return dq, dk, dv, None


def group_attention_triton(q: Tensor, k: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """Same contract as `reference.group_attention_reference`; differentiable in q, k, v. The result is a
    [G, H, K, dh] view of [G, K, H, dh] memory, so `merge_heads` on it is free."""
    return GroupAttentionFunction.apply(q, k, v, valid)
