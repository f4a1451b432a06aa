"""The Triton hybrid attention kernels give the reference's outputs and input gradients: cross-causal
(queries = last min(k, L') + m positions) and self-causal layers, ragged lengths including 0, k larger
than the length, fp32 and bf16, the split-KV forward and KV-cached candidate scoring. Padding is filled
with NaN on the Triton side, so any read of it (a padding block not skipped, a padded row not masked)
shows up as NaN."""

import pytest
import torch
from kernel_checks import DEVICE, assert_close_to_reference, sizes

pytest.importorskip("triton")

from longer_train.kernels import candidate_attention, hybrid_attention  # noqa: E402
from longer_train.kernels.hybrid_attention_triton import hybrid_attention_triton  # noqa: E402

M_GLOBALS = 3
# (seed, batch, heads, merged length L', k, head dim, dtype); the large (GPU) shapes in bf16 only, to keep
# make gpu-check's compile time down
SMALL = [(0, 3, 2, 37, 5, 16), (1, 4, 1, 9, 20, 32), (2, 2, 2, 0, 4, 16), (3, 3, 1, 26, 26, 8)]
LARGE = [(10, 64, 8, 1250, 100, 32), (11, 32, 8, 500, 100, 64), (12, 16, 4, 777, 1000, 32)]
CASES = sizes(
    small=[(*case, dtype) for case in SMALL for dtype in (torch.float32, torch.bfloat16)],
    large=[(*case, torch.bfloat16) for case in LARGE],
)


def _layer_inputs(seed: int, batch: int, heads: int, seq_len: int, k: int, dh: int, dtype, layer: str):
    """q, k, v and num_pad shaped as the model's cross-causal or self-causal layer sees them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, seq_len + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = 0, seq_len  # an empty history and a full one in every batch
    num_pad = seq_len - lengths
    k_eff = min(k, seq_len)
    lq, lk = k_eff + M_GLOBALS, seq_len + M_GLOBALS
    if layer == "self":
        lk, num_pad = lq, (num_pad - (seq_len - k_eff)).clamp(min=0)
    q, key, v = (torch.randn(batch, heads, n, dh, generator=g).to(dtype) for n in (lq, lk, lk))
    return q, key, v, num_pad


def _poison_padding(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_pad: torch.Tensor):
    """Copies with NaN in every padded key/value position and every padded query row."""
    lq, lk = q.shape[2], k.shape[2]
    key_pad = torch.arange(lk)[None, :] < num_pad[:, None]  # [B, Lk]
    query_pad = key_pad[:, lk - lq :]
    nan = float("nan")
    return (
        q.masked_fill(query_pad[:, None, :, None], nan),
        k.masked_fill(key_pad[:, None, :, None], nan),
        v.masked_fill(key_pad[:, None, :, None], nan),
    )


def _outputs_and_grads(fn, q, k, v, d_out):
    q, k, v = (t.detach().to(DEVICE).requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(d_out.to(DEVICE))
    return out, q.grad, k.grad, v.grad


@pytest.mark.parametrize("layer", ["cross", "self"])
@pytest.mark.parametrize("seed, batch, heads, seq_len, k, dh, dtype", CASES)
def test_matches_reference(seed, batch, heads, seq_len, k, dh, dtype, layer):
    q, key, v, num_pad = _layer_inputs(seed, batch, heads, seq_len, k, dh, dtype, layer)
    d_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed + 100)).to(dtype)
    pad = num_pad.to(DEVICE)
    expected = _outputs_and_grads(
        lambda *t: hybrid_attention(*t, pad, impl="reference"), q.float(), key.float(), v.float(), d_out.float()
    )
    actual = _outputs_and_grads(
        lambda *t: hybrid_attention(*t, pad, impl="triton"), *_poison_padding(q, key, v, num_pad), d_out
    )
    for name, a, e in zip(["out", "dq", "dk", "dv"], actual, expected):
        assert a.dtype == dtype
        assert_close_to_reference(a, e, name)


@pytest.mark.parametrize("num_splits", [2, 3, 5])
def test_split_kv_forward_matches_reference(num_splits):
    """Few queries over many keys: the key range cut into chunks merged by log-sum-exp, gradients included."""
    q, key, v, num_pad = _layer_inputs(4, 3, 2, 40, 4, 16, torch.float32, "cross")
    d_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))
    pad = num_pad.to(DEVICE)
    expected = _outputs_and_grads(lambda *t: hybrid_attention(*t, pad, impl="reference"), q, key, v, d_out)
    actual = _outputs_and_grads(lambda *t: hybrid_attention_triton(*t, pad, num_splits), q, key, v, d_out)
    for name, a, e in zip(["out", "dq", "dk", "dv"], actual, expected):
        assert_close_to_reference(a, e, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_candidate_attention_matches_reference(dtype):
    g = torch.Generator().manual_seed(6)
    users, heads, cache_len, candidates, dh = 4, 2, 29, 5, 16
    q, k_self, v_self = (torch.randn(users, heads, candidates, dh, generator=g).to(dtype) for _ in range(3))
    k_cache, v_cache = (torch.randn(users, heads, cache_len, dh, generator=g).to(dtype) for _ in range(2))
    num_pad = torch.tensor([0, 7, 28, cache_len])  # the last user has an empty cache
    inputs = [t.to(DEVICE) for t in (q, k_cache, v_cache, num_pad, k_self, v_self)]
    expected = candidate_attention(*[t.float() if t.is_floating_point() else t for t in inputs], impl="reference")
    actual = candidate_attention(*inputs, impl="triton")
    assert actual.dtype == dtype
    assert_close_to_reference(actual, expected, "candidate attention")


def _tiles_with_work(num_pad: torch.Tensor, lq: int, lk: int, query_offset: int, heads: int) -> int:
    """(query block, key block) tiles of the interpreter's 16 x 16 blocks that hold at least one unmasked
    score (a valid query, a valid key, not after the query), summed over rows and heads: the work a kernel
    that skips padding does, and no more."""
    from longer_train.kernels.hybrid_attention_triton import CPU_BLOCKS

    bm, bn = CPU_BLOCKS["BLOCK_M"], CPU_BLOCKS["BLOCK_N"]
    q_pos, k_pos = torch.arange(lq)[:, None] + query_offset, torch.arange(lk)[None, :]
    tiles = 0
    for pad in num_pad.tolist():
        allowed = (k_pos >= pad) & (k_pos <= q_pos) & (q_pos >= pad)
        tiles += sum(bool(allowed[i : i + bm, j : j + bn].any()) for i in range(0, lq, bm) for j in range(0, lk, bn))
    return tiles * heads


@pytest.mark.skipif(DEVICE == "cuda", reason="counts tiles through the Triton interpreter (CPU)")
@pytest.mark.parametrize("layer, num_splits", [("cross", 1), ("self", 1), ("cross", 3)])
def test_no_work_on_padding(monkeypatch, layer, num_splits):
    """Every kernel (forward, dQ, dK/dV) multiplies exactly the tiles that hold an unmasked score: padding
    blocks, all-padding rows and tiles after the causal edge are skipped, not computed and masked. Counted
    through the mask helper, which each kernel calls once per tile (the interpreter runs kernels as Python).
    The masked loads keep results right either way, so this is what shows the skipping."""
    import longer_train.kernels.hybrid_attention_triton as kernels

    tiles = [0]
    allowed = kernels._allowed

    def counted(*args):
        tiles[0] += 1
        return allowed(*args)

    monkeypatch.setattr(kernels, "_allowed", counted)
    # 70 events: rows of every kind (empty, short, one block, ragged, full), over several 16-key blocks
    q, key, v, _ = _layer_inputs(7, 6, 2, 70, 20, 16, torch.float32, layer)
    lq, lk = q.shape[2], key.shape[2]
    num_pad = torch.tensor([lk, lk - 1, lk - 16, lk - 23, 9, 0])
    expected = _tiles_with_work(num_pad, lq, lk, lk - lq, heads=2)
    q, key, v = (t.requires_grad_() for t in (q, key, v))
    out = hybrid_attention_triton(q, key, v, num_pad, num_splits)
    assert tiles[0] == expected, f"forward: {tiles[0]} tiles, {expected} hold work"
    tiles[0] = 0
    out.backward(torch.ones_like(out))
    assert tiles[0] == 2 * expected, f"backward (dQ + dK/dV): {tiles[0]} tiles, 2 x {expected} hold work"

    tiles[0] = 0  # candidates: every query after the whole cache
    kernels.candidate_attention_triton(q.detach(), key.detach(), v.detach(), num_pad, q.detach(), q.detach())
    assert tiles[0] == _tiles_with_work(num_pad, lq, lk, lk, heads=2)
