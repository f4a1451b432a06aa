"""`attention_impl=sdpa` (kernels/sdpa.py) computes what the reference computes: outputs and gradients, with
left padding, padded queries, an empty row, gathered query positions and padded groups (the dense model
through it: tests/models/test_longer.py)."""

import pytest
import torch
from longer_train.kernels import group_attention, hybrid_attention


def _grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    out.backward(torch.randn_like(out, generator=torch.Generator().manual_seed(1)))
    return out.detach(), [t.grad for t in tensors]


@pytest.mark.parametrize("gathered", [False, True])
def test_hybrid_attention_sdpa_matches_the_reference(gathered):
    g = torch.Generator().manual_seed(0)
    b, h, lq, lk, dh = 4, 2, 5, 12, 16
    q = torch.randn(b, h, lq, dh, generator=g)
    k, v = torch.randn(b, h, lk, dh, generator=g), torch.randn(b, h, lk, dh, generator=g)
    num_pad = torch.tensor([0, 4, 9, 12])  # full, padded, padded queries, empty
    q_pos = torch.sort(torch.randint(0, lk, (b, lq), generator=g), dim=1).values if gathered else None
    ref = _grads(lambda *t: hybrid_attention(*t, num_pad, impl="reference", q_pos=q_pos), q, k, v)
    sdpa = _grads(lambda *t: hybrid_attention(*t, num_pad, impl="sdpa", q_pos=q_pos), q, k, v)
    torch.testing.assert_close(sdpa[0], ref[0], atol=1e-5, rtol=1e-5)
    for a, r in zip(sdpa[1], ref[1]):
        torch.testing.assert_close(a, r, atol=1e-5, rtol=1e-5)


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
