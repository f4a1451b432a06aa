"""The attention references agree with each other: candidate attention over a cache equals the last row
of hybrid attention over [cache; candidate]."""

import torch
from longer_train.kernels.reference import candidate_attention_reference, hybrid_attention_reference


def test_candidate_attention_is_the_last_hybrid_row():
    g = torch.Generator().manual_seed(0)
    u, h, lk, c, dh = 4, 2, 9, 5, 8
    q, k_self, v_self = (torch.randn(u, h, c, dh, generator=g) for _ in range(3))
    k_cache, v_cache = torch.randn(u, h, lk, dh, generator=g), torch.randn(u, h, lk, dh, generator=g)
    num_pad = torch.tensor([0, 3, 8, 9])  # the last user has no valid cached key
    out = candidate_attention_reference(q, k_cache, v_cache, num_pad, k_self, v_self)
    for j in range(c):
        k = torch.cat([k_cache, k_self[:, :, j : j + 1]], dim=2)
        v = torch.cat([v_cache, v_self[:, :, j : j + 1]], dim=2)
        full = hybrid_attention_reference(q[:, :, j : j + 1], k, v, num_pad)
        torch.testing.assert_close(out[:, :, j : j + 1], full, atol=1e-6, rtol=0)
