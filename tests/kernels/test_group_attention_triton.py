"""The fused InnerTrans group attention kernel gives the reference's outputs and input gradients for K = 4,
8, 16, with ragged padding (lengths not a multiple of K, empty rows), fp32 and bf16; it reads q/k/v as
strided head views of one qkv projection and writes the merged-token layout. Padding tokens are NaN on the
Triton side, so any read of them shows up."""

import pytest
import torch
from kernel_checks import DEVICE, assert_close_to_reference, sizes

pytest.importorskip("triton")

from longer_train.kernels import group_attention  # noqa: E402

# (seed, batch, groups per row, K, heads, head dim, dtype); the large (GPU) shapes in bf16 only
SMALL = [(0, 5, 4, 4, 2, 16), (1, 2, 5, 8, 1, 32), (2, 3, 2, 16, 2, 8)]
LARGE = [(10, 512, 125, 8, 1, 32), (11, 256, 64, 16, 2, 32), (12, 1024, 100, 4, 1, 32)]
CASES = sizes(
    small=[(*case, dtype) for case in SMALL for dtype in (torch.float32, torch.bfloat16)],
    large=[(*case, torch.bfloat16) for case in LARGE],
)


def _merge_inputs(seed: int, batch: int, groups: int, k: int, heads: int, dh: int, dtype):
    """qkv [G, K, 3*H*dh] as InnerTransBlock's projection makes it, and valid [G, K] from left-padded rows."""
    g = torch.Generator().manual_seed(seed)
    length = groups * k
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    lengths[0], lengths[-1] = 0, length - 1  # an empty row and one whose oldest group is partly padding
    valid = torch.arange(length)[None, :] >= (length - lengths)[:, None]  # [B, L] left padding
    qkv = torch.randn(batch * groups, k, 3 * heads * dh, generator=g).to(dtype)
    return qkv, valid.reshape(batch * groups, k)


def _heads(qkv: torch.Tensor, heads: int):
    """q, k, v as the model passes them: [G, H, K, dh] strided views of qkv (no copy)."""
    g, k, _ = qkv.shape
    return [t.view(g, k, heads, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1)]


@pytest.mark.parametrize("seed, batch, groups, k, heads, dh, dtype", CASES)
def test_matches_reference(seed, batch, groups, k, heads, dh, dtype):
    qkv, valid = _merge_inputs(seed, batch, groups, k, heads, dh, dtype)
    d_out = torch.randn(qkv.shape[0], heads, k, dh, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    valid, d_out = valid.to(DEVICE), d_out.to(DEVICE)

    ref_qkv = qkv.float().to(DEVICE).clone().requires_grad_()
    expected = group_attention(*_heads(ref_qkv, heads), valid, impl="reference")
    expected.backward(d_out.float())

    poisoned = qkv.to(DEVICE).masked_fill(~valid[..., None], float("nan")).requires_grad_()
    actual = group_attention(*_heads(poisoned, heads), valid, impl="triton")
    actual.backward(d_out)

    assert actual.dtype == dtype
    assert actual.transpose(1, 2).is_contiguous()  # [G, K, H*dh] memory: merge_heads is free
    assert_close_to_reference(actual, expected, "out")
    assert_close_to_reference(poisoned.grad, ref_qkv.grad, "d qkv")
