"""Triton kernels for LONGER's hybrid (causal) attention: forward with optional split-KV, backward, and the
KV-cached candidate scoring built on the same forward kernel.

Interface: the model's padded layout, q [B, H, Lq, dh], k/v [B, H, Lk, dh], plus `num_pad` [B]. That is
the varlen information: sample b's valid keys are positions num_pad[b] .. Lk-1 (left padding, so its
length is Lk - num_pad[b]). We keep this layout instead of a jagged (values + offsets) one because every
caller (cross-causal layer, self-causal layers, KV cache) already holds it and left padding makes the
valid part of each row one contiguous range: a program starts its key loop at the first block holding
position num_pad[b], so whole padding blocks are never loaded or multiplied, and the causal end of the
loop stops at the block of its last query. No mask tensor exists anywhere: masks are computed in
registers from (num_pad[b], query position, key position).

Query i sits at key position `query_offset + i`: Lk - Lq for hybrid attention (bottom-right aligned; the
self-causal layers are the same call with Lq = Lk) and Lk for candidates (they see the whole cache).
A query before num_pad[b] is padding: no key, output 0, zero gradient.

Kernels (flash-attention-2 style, online softmax in base 2, fp32 accumulation):
- `_hybrid_fwd_kernel`: grid (query blocks, B*H, splits). With splits > 1 each program covers one chunk
  of the key range and writes its partial output (normalised over that chunk) and log-sum-exp;
  `combine_partials` merges them (flash-decoding). Used when Lq is small (few-queries-many-keys) and
  B*H alone would leave SMs idle.
- `_hybrid_bwd_dq_kernel` (launched first): one program per query block computes delta = rowsum(dO * O)
  for its rows (stored for the next kernel) and loops over its key range (no atomics).
- `_hybrid_bwd_dkdv_kernel`: one program per key block loops over the query blocks that can see it.
On CUDA the block sizes are autotuned over a few configs aimed at sm_90 (`tile_ops.Launcher`); on CPU
(TRITON_INTERPRET=1, tests) fixed small blocks are used.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .tile_ops import LOG2E, Launcher, dot

LN2 = 0.6931471805599453
CPU_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}
# integer arguments that change from batch to batch: no recompilation for their divisibility by 16
_VARYING = ["num_heads", "seq_len_q", "seq_len_k", "query_offset", "q_bucket", "k_bucket"]


@triton.jit
def _load_rows(base, rows, stride_row, first_row, num_rows, offs_d, head_dim: tl.constexpr):
    """[len(rows), BLOCK_D] tile of a [num_rows, head_dim] matrix. Rows before first_row (padding) or past
    the end and columns past head_dim read 0: padding is never read, whatever it holds."""
    mask = (rows[:, None] >= first_row) & (rows[:, None] < num_rows) & (offs_d[None, :] < head_dim)
    return tl.load(base + rows[:, None] * stride_row + offs_d[None, :], mask=mask, other=0.0)


@triton.jit
def _allowed(q_pos, keys, key_start, seq_len_k):
    """[M, N] mask: key valid (not padding, in range) and not after the query (causal)."""
    return (keys[None, :] >= key_start) & (keys[None, :] <= q_pos[:, None]) & (keys[None, :] < seq_len_k)


@triton.jit
def _key_range(key_start, query_offset, pid_m, seq_len_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key positions [lo, hi) that query block pid_m needs: from the block holding the first valid key to
    its last query (causal); empty when every query of the block is padding."""
    lo = key_start // BLOCK_N * BLOCK_N
    hi = tl.minimum(query_offset + (pid_m + 1) * BLOCK_M, seq_len_k)
    return lo, tl.where(hi > key_start, hi, lo)


@triton.jit(do_not_specialize=_VARYING + ["num_splits"])
def _hybrid_fwd_kernel(
    Q, K, V, NumPad, Out, Lse,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_os, stride_ob, stride_oh, stride_om,  # Out [splits, B, H, Lq, dh]
    num_heads, seq_len_q, seq_len_k, query_offset, num_splits, qk_scale, q_bucket, k_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
):
    pid_m, pid_bh, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = (pid_bh // num_heads).to(tl.int64), pid_bh % num_heads  # int64: B * batch stride may pass 2**31
    key_start = tl.load(NumPad + b).to(tl.int32)  # first valid key position
    first_q = key_start - query_offset  # first valid query index (earlier queries are padding)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = query_offset + offs_m  # key position of each query
    lo, hi = _key_range(key_start, query_offset, pid_m, seq_len_k, BLOCK_M, BLOCK_N)
    keys_per_split = tl.cdiv(tl.cdiv(seq_len_k, num_splits), BLOCK_N) * BLOCK_N  # whole blocks per split
    lo = tl.maximum(lo, split * keys_per_split)
    hi = tl.minimum(hi, (split + 1) * keys_per_split)

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qm, first_q, seq_len_q, offs_d, HEAD_DIM)
    k_base, v_base = K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kn, key_start, seq_len_k, offs_d, HEAD_DIM)
        s = dot(q, tl.trans(k), WIDEN_DOT) * qk_scale  # [M, N] logits in base 2
        s = tl.where(_allowed(q_pos, offs_n, key_start, seq_len_k), s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet stay all-zero
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base, offs_n, stride_vn, key_start, seq_len_k, offs_d, HEAD_DIM)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, WIDEN_DOT)
        m_i = m_new

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("-inf"))  # -inf: no key
    o_base = Out + split * stride_os + b * stride_ob + h * stride_oh
    o_mask = (offs_m[:, None] < seq_len_q) & (offs_d[None, :] < HEAD_DIM)
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :], out.to(Out.dtype.element_ty), mask=o_mask)
    lse_base = Lse + (split * tl.num_programs(1) + pid_bh) * seq_len_q
    tl.store(lse_base + offs_m, lse, mask=offs_m < seq_len_q)


@triton.jit(do_not_specialize=_VARYING)
def _hybrid_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, NumPad, DK, DV,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    num_heads, seq_len_q, seq_len_k, query_offset, sm_scale, qk_scale, q_bucket, k_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
):
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // num_heads).to(tl.int64), pid_bh % num_heads  # int64: B * batch stride may pass 2**31
    key_start = tl.load(NumPad + b).to(tl.int32)  # first valid key position
    first_q = key_start - query_offset  # first valid query index (earlier queries are padding)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    # queries that can see this key block: from the first valid one at or after its first key; none if
    # the block holds no valid key (all padding, or past the end: the loop is then empty and zeros are written)
    lo = tl.maximum(tl.maximum(pid_n * BLOCK_N - query_offset, first_q), 0) // BLOCK_M * BLOCK_M
    hi = tl.where(tl.minimum((pid_n + 1) * BLOCK_N, seq_len_k) > key_start, seq_len_q, lo)

    k = _load_rows(K + b * stride_kb + h * stride_kh, offs_n, stride_kn, key_start, seq_len_k, offs_d, HEAD_DIM)
    v = _load_rows(V + b * stride_vb + h * stride_vh, offs_n, stride_vn, key_start, seq_len_k, offs_d, HEAD_DIM)
    q_base, do_base = Q + b * stride_qb + h * stride_qh, DO + b * stride_dob + h * stride_doh
    row_base = pid_bh * seq_len_q
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_base, offs_m, stride_qm, first_q, seq_len_q, offs_d, HEAD_DIM)
        do = _load_rows(do_base, offs_m, stride_dom, first_q, seq_len_q, offs_d, HEAD_DIM)
        lse = tl.load(Lse + row_base + offs_m, mask=offs_m < seq_len_q, other=float("inf"))  # rows past Lq: p = 0
        delta = tl.load(Delta + row_base + offs_m, mask=offs_m < seq_len_q, other=0.0)
        s = dot(q, tl.trans(k), WIDEN_DOT) * qk_scale  # [M, N]
        p = tl.where(_allowed(query_offset + offs_m, offs_n, key_start, seq_len_k), tl.math.exp2(s - lse[:, None]), 0.0)
        dv += dot(tl.trans(p.to(do.dtype)), do, WIDEN_DOT)
        dp = dot(do, tl.trans(v), WIDEN_DOT)
        ds = p * (dp - delta[:, None])
        dk += dot(tl.trans(ds.to(q.dtype)), q, WIDEN_DOT)

    mask = (offs_n[:, None] < seq_len_k) & (offs_d[None, :] < HEAD_DIM)
    dk_ptr = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_ptr = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    tl.store(dk_ptr, (dk * sm_scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(dv_ptr, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_VARYING)
def _hybrid_bwd_dq_kernel(
    Q, K, V, DO, Out, Lse, Delta, NumPad, DQ,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom, stride_ob, stride_oh, stride_om, stride_dqb, stride_dqh, stride_dqm,
    num_heads, seq_len_q, seq_len_k, query_offset, sm_scale, qk_scale, q_bucket, k_bucket,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    WIDEN_DOT: tl.constexpr,
):
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // num_heads).to(tl.int64), pid_bh % num_heads  # int64: B * batch stride may pass 2**31
    key_start = tl.load(NumPad + b).to(tl.int32)  # first valid key position
    first_q = key_start - query_offset  # first valid query index (earlier queries are padding)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_pos = query_offset + offs_m
    lo, hi = _key_range(key_start, query_offset, pid_m, seq_len_k, BLOCK_M, BLOCK_N)

    q = _load_rows(Q + b * stride_qb + h * stride_qh, offs_m, stride_qm, first_q, seq_len_q, offs_d, HEAD_DIM)
    do = _load_rows(DO + b * stride_dob + h * stride_doh, offs_m, stride_dom, first_q, seq_len_q, offs_d, HEAD_DIM)
    lse = tl.load(Lse + pid_bh * seq_len_q + offs_m, mask=offs_m < seq_len_q, other=float("inf"))  # past Lq: p = 0
    # delta = rowsum(dO * O), computed here for these query rows and stored for the dK/dV kernel (run next)
    o = _load_rows(Out + b * stride_ob + h * stride_oh, offs_m, stride_om, first_q, seq_len_q, offs_d, HEAD_DIM)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    tl.store(Delta + pid_bh * seq_len_q + offs_m, delta, mask=offs_m < seq_len_q)
    k_base, v_base = K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kn, key_start, seq_len_k, offs_d, HEAD_DIM)
        v = _load_rows(v_base, offs_n, stride_vn, key_start, seq_len_k, offs_d, HEAD_DIM)
        s = dot(q, tl.trans(k), WIDEN_DOT) * qk_scale
        p = tl.where(_allowed(q_pos, offs_n, key_start, seq_len_k), tl.math.exp2(s - lse[:, None]), 0.0)
        dp = dot(do, tl.trans(v), WIDEN_DOT)
        ds = p * (dp - delta[:, None])
        dq += dot(ds.to(k.dtype), k, WIDEN_DOT)

    mask = (offs_m[:, None] < seq_len_q) & (offs_d[None, :] < HEAD_DIM)
    dq_ptr = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :]
    tl.store(dq_ptr, (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask)


def _configs(*block_warps_stages: tuple[int, int, int, int]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in block_warps_stages]


# Three or four sm_90 configs each (few, for compile time; the first is the default without autotuning),
# tuned per head size and power-of-two bucket of Lq and Lk, so ragged batches do not retune every step.
_TUNE_KEY = ["HEAD_DIM", "q_bucket", "k_bucket"]
_fwd = Launcher(
    _hybrid_fwd_kernel,
    _configs((64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3), (128, 128, 8, 2)), _TUNE_KEY, CPU_BLOCKS,
)
_bwd_dkdv = Launcher(
    _hybrid_bwd_dkdv_kernel, _configs((32, 64, 4, 2), (64, 64, 4, 2), (64, 128, 8, 2)), _TUNE_KEY, CPU_BLOCKS
)
_bwd_dq = Launcher(
    _hybrid_bwd_dq_kernel, _configs((64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2)), _TUNE_KEY, CPU_BLOCKS
)


def _shape_args(q: Tensor, k: Tensor, query_offset: int) -> tuple:
    lq, lk = q.shape[2], k.shape[2]
    return (q.shape[1], lq, lk, query_offset)


def _buckets(q: Tensor, k: Tensor) -> tuple[int, int]:
    return triton.next_power_of_2(q.shape[2]), triton.next_power_of_2(k.shape[2])


def _head_constexprs(dh: int) -> dict:
    return {"HEAD_DIM": dh, "BLOCK_D": max(16, triton.next_power_of_2(dh))}


def default_num_splits(batch_heads: int, seq_len_q: int, seq_len_k: int, device: torch.device) -> int:
    """Split the key range when query blocks x B*H would leave SMs idle and each split keeps >= 256 keys."""
    if device.type != "cuda":
        return 1
    programs = batch_heads * triton.cdiv(seq_len_q, 64)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(2 * sms // max(programs, 1), seq_len_k // 256, 16))


def attention_forward(
    q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, query_offset: int, num_splits: int | None = None
) -> tuple[Tensor, Tensor]:
    """Output [B, H, Lq, dh] (q's dtype) and base-2 log-sum-exp [B, H, Lq] (fp32; -inf: no valid key)."""
    b, h, lq, dh = q.shape
    lk = k.shape[2]
    if b * h * lq == 0:
        return torch.zeros_like(q), q.new_full((b, h, lq), float("-inf"), dtype=torch.float32)
    splits = num_splits or default_num_splits(b * h, lq, lk, q.device)
    partial = q.new_empty((splits, b, h, lq, dh), dtype=q.dtype if splits == 1 else torch.float32)
    lse = q.new_empty((splits, b, h, lq), dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * h, splits)
    _fwd(
        grid,
        q, k, v, num_pad, partial, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *partial.stride()[:4],
        *_shape_args(q, k, query_offset), splits, LOG2E / math.sqrt(dh), *_buckets(q, k), **_head_constexprs(dh),
    )
    if splits == 1:
        return partial[0], lse[0]
    out, lse = combine_partials(partial, lse)
    return out.to(q.dtype), lse


def combine_partials(outs: Tensor, lses: Tensor) -> tuple[Tensor, Tensor]:
    """Merge attention outputs over disjoint key sets: outs [S, ..., dh] each normalised over its own keys,
    lses [S, ...] their base-2 log-sum-exps (-inf: no key). Returns (out [..., dh] fp32, lse [...])."""
    total = torch.logsumexp(lses * LN2, dim=0) / LN2  # [...]
    weights = torch.exp2(lses - total).nan_to_num(0.0)  # rows with no key anywhere: all weights 0
    return (weights[..., None] * outs.float()).sum(0), total


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("triton hybrid attention needs the head dimension contiguous (stride 1)")


class HybridAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, num_splits: int | None) -> Tensor:
        _check(q, k, v)
        num_pad = num_pad.to(device=q.device, dtype=torch.int32).contiguous()
        query_offset = k.shape[2] - q.shape[2]
        out, lse = attention_forward(q, k, v, num_pad, query_offset, num_splits)
        ctx.save_for_backward(q, k, v, num_pad, out, lse)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        q, k, v, num_pad, out, lse = ctx.saved_tensors
        if q.numel() == 0:
            return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), None, None
        d_out = d_out if d_out.stride(-1) == 1 else d_out.contiguous()
        b, h, lq, dh = q.shape
        lk = k.shape[2]
        query_offset = lk - lq
        lse = lse.contiguous()
        delta = lse.new_empty((b, h, lq))  # rowsum(dO * O): written by the dQ kernel, read by the dK/dV kernel
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        sm_scale = 1.0 / math.sqrt(dh)
        common = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *d_out.stride()[:3])
        scalars = (*_shape_args(q, k, query_offset), sm_scale, sm_scale * LOG2E, *_buckets(q, k))
        _bwd_dq(
            lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * h),
            q, k, v, d_out, out, lse, delta, num_pad, dq, *common, *out.stride()[:3], *dq.stride()[:3], *scalars,
            **_head_constexprs(dh),
        )
        _bwd_dkdv(
            lambda meta: (triton.cdiv(lk, meta["BLOCK_N"]), b * h),
            q, k, v, d_out, lse, delta, num_pad, dk, dv, *common, *dk.stride()[:3], *dv.stride()[:3], *scalars,
            **_head_constexprs(dh),
        )
        return dq, dk, dv, None, None


def hybrid_attention_triton(q: Tensor, k: Tensor, v: Tensor, num_pad: Tensor, num_splits: int | None = None) -> Tensor:
    """Same contract as `reference.hybrid_attention_reference`; differentiable in q, k, v."""
    return HybridAttentionFunction.apply(q, k, v, num_pad, num_splits)


@torch.no_grad()
def candidate_attention_triton(
    q: Tensor, k_cache: Tensor, v_cache: Tensor, num_pad: Tensor, k_self: Tensor, v_self: Tensor
) -> Tensor:
    """Same contract as `reference.candidate_attention_reference` (serving: forward only). The cache part is
    the forward kernel with every query placed after the cache; the candidate's own key is merged in as one
    more partial result."""
    _check(q, k_cache, v_cache)
    num_pad = num_pad.to(device=q.device, dtype=torch.int32).contiguous()
    cached, lse = attention_forward(q, k_cache, v_cache, num_pad, query_offset=k_cache.shape[2])
    own = (q.float() * k_self.float()).sum(-1) * (LOG2E / math.sqrt(q.shape[-1]))  # [U, H, C] base-2 logit
    out, _ = combine_partials(torch.stack([cached.float(), v_self.float()]), torch.stack([lse, own]))
    return out.to(q.dtype)
