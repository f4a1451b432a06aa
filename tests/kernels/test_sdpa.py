"""`attention_impl=sdpa` (kernels/sdpa.py) computes what the reference computes: outputs and gradients, with
left padding, padded queries, an empty row, gathered query positions and padded groups (the dense model
through it: tests/models/test_longer.py); causal calls whose queries are the last positions take SDPA's causal
modes, never an L x L mask; and FlopCounterMode counts the CPU flash kernel."""

import pytest
import torch
import torch.nn.functional as F
from longer_train.kernels import group_attention, hybrid_attention
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


class SdpaCalls(TorchFunctionMode, list):
    """Records (attn_mask, is_causal) of each call of F.scaled_dot_product_attention made inside it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.append((kwargs.get("attn_mask"), kwargs.get("is_causal", False)))
        return func(*args, **kwargs)


def _grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    # not randn_like, which fills in memory order: outputs of two layouts would get different gradients
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return out.detach(), [t.grad for t in tensors]


def _assert_matches_reference(q, k, v, num_pad, q_pos=None):
    ref = _grads(lambda *t: hybrid_attention(*t, num_pad, impl="reference", q_pos=q_pos), q, k, v)
    sdpa = _grads(lambda *t: hybrid_attention(*t, num_pad, impl="sdpa", q_pos=q_pos), q, k, v)
    torch.testing.assert_close(sdpa[0], ref[0], atol=1e-5, rtol=1e-5)
    for a, r in zip(sdpa[1], ref[1]):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


def _inputs(b, lq, lk, h=2, dh=16, seed=0, token_major=False):
    """q [b, h, lq, dh], k and v [b, h, lk, dh]: contiguous, or (token_major) the head views of [b, L, h * dh]
    tensors, as split_heads leaves a projection."""
    g = torch.Generator().manual_seed(seed)
    if token_major:
        return [torch.randn(b, n, h, dh, generator=g).transpose(1, 2) for n in (lq, lk, lk)]
    return [torch.randn(b, h, n, dh, generator=g) for n in (lq, lk, lk)]


@pytest.mark.parametrize("gathered", [False, True])
def test_hybrid_attention_sdpa_matches_the_reference(gathered):
    q, k, v = _inputs(4, 5, 12)
    num_pad = torch.tensor([0, 4, 9, 12])  # full, padded, padded queries, empty
    q_pos = torch.sort(torch.randint(0, 12, (4, 5), generator=torch.Generator().manual_seed(2)), dim=1).values
    _assert_matches_reference(q, k, v, num_pad, q_pos if gathered else None)


@pytest.mark.parametrize("lq", [7, 19])  # fewer queries than keys (the cross layer), every position a query
@pytest.mark.parametrize("num_pad", [[0, 0, 0], [0, 5, 18], [3, 19, 1]])  # no padding; padded rows; an empty one
def test_bottom_right_causal_matches_the_reference_without_a_square_mask(lq, num_pad):
    """Queries at the last positions: no row padded -> is_causal, or lower-right causal ([Lq, Lk] on CPU); every
    position a query with padded rows -> is_causal on the rows rotated to put their padding last; only padded rows
    with fewer queries than keys take a per-row mask, [B, 1, Lq, Lk]. Outputs and gradients are the reference's."""
    q, k, v = _inputs(3, lq, 19, seed=lq)
    with SdpaCalls() as calls:
        _assert_matches_reference(q, k, v, torch.tensor(num_pad))
    padded = any(num_pad)
    for mask, causal in calls:
        if lq == 19:
            assert mask is None and causal
        elif not padded:  # lower-right causal: on CPU one [Lq, Lk] mask for the batch
            assert mask.shape == (lq, 19) and not causal
        else:
            assert mask.shape == (3, 1, lq, 19) and not causal
    assert calls


@pytest.mark.parametrize("token_major", [False, True])
def test_rotated_rows_match_the_reference_and_ignore_what_padding_holds(token_major):
    """With padded rows and every position a query (rows rotated, in either memory layout), outputs and gradients
    are the reference's and do not depend on the padded positions' queries, keys or values."""
    q, k, v = _inputs(3, 11, 11, token_major=token_major)
    _assert_matches_reference(q, k, v, torch.tensor([0, 4, 10]))
    num_pad = torch.tensor([0, 4, 10])
    pad = (torch.arange(11)[None, :] < num_pad[:, None])[:, None, :, None]
    garbage = [torch.where(pad, torch.randn_like(t) * 100, t) for t in (q, k, v)]
    clean = _grads(lambda *t: hybrid_attention(*t, num_pad, impl="sdpa"), q, k, v)
    dirty = _grads(lambda *t: hybrid_attention(*t, num_pad, impl="sdpa"), *garbage)
    torch.testing.assert_close(dirty[0], clean[0], atol=1e-5, rtol=1e-5)
    assert (clean[0] * pad == 0).all()  # padded queries output 0
    for a, r in zip(dirty[1], clean[1]):
        torch.testing.assert_close(a * ~pad, r * ~pad, atol=1e-5, rtol=1e-5)


def test_group_attention_sdpa_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    groups, h, k, dh = 6, 1, 8, 32
    q, kk, v = (torch.randn(groups, h, k, dh, generator=g) for _ in range(3))
    valid = torch.arange(k)[None, :] >= torch.tensor([0, 3, 7, 8, 1, 0])[:, None]  # one group all padding
    ref = _grads(lambda *t: group_attention(*t, valid, impl="reference"), q, kk, v)
    sdpa = _grads(lambda *t: group_attention(*t, valid, impl="sdpa"), q, kk, v)
    torch.testing.assert_close(sdpa[0], ref[0], atol=1e-5, rtol=1e-5)
    for a, r in zip(sdpa[1], ref[1]):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_pad", [[0, 0], [0, 3]])
def test_flop_counter_counts_the_cpu_flash_kernel_as_the_reference_s_matmuls(num_pad):
    q, k, v = _inputs(2, 9, 9)
    counts = []
    for impl in ("reference", "sdpa"):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            hybrid_attention(q, k, v, torch.tensor(num_pad), impl=impl)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * (2 * 4 * 9 * 9 * 16)  # QK^T and PV, each 2 FLOPs x [B * H = 4, 9, 9] x 16
