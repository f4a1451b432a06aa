"""KV-cached scoring equals the full forward pass for every candidate: ragged histories (empty included),
both merge modes, every query-selection rule, k below, at and above the merged length, with and without the
candidate match."""

import dataclasses

import pytest
import torch
from longer_inputs import DIMS, make_inputs, make_model

from longer_train.config import QUERY_RULES
from longer_train.serve import prefill, score

LENGTHS = [0, 3, 17, 64, 40]  # merged lengths 0, 1, 5, 16, 10 with K = 4


@pytest.mark.parametrize("rule", QUERY_RULES)
@pytest.mark.parametrize("match", ["none", "attention", "attention_readout"])
@pytest.mark.parametrize("k", [1, 3, 8, 100])
def test_cached_scores_equal_full_forward(merge, k, match, rule):
    model = make_model(merge, num_queries=k, candidate_match=match, query_selection=rule)
    users = make_inputs(LENGTHS)
    candidates = torch.randn(len(LENGTHS), 6, DIMS.candidate, generator=torch.Generator().manual_seed(7))
    cached = score(model, prefill(model, users), candidates)  # [U, C]
    with torch.no_grad():
        for c in range(candidates.shape[1]):
            full = model(dataclasses.replace(users, candidate=candidates[:, c]))
            torch.testing.assert_close(cached[:, c], full, atol=1e-5, rtol=0)


def test_one_cache_serves_any_number_of_candidates():
    model = make_model("concat")
    users = make_inputs(LENGTHS)
    cache = prefill(model, users)
    many = torch.randn(len(LENGTHS), 50, DIMS.candidate)
    torch.testing.assert_close(score(model, cache, many)[:, :5], score(model, cache, many[:, :5]), atol=1e-6, rtol=0)


def test_cached_scores_in_bf16_are_within_the_documented_tolerance(merge):
    """bf16 tolerance (docs/serving.md): |cached - full| <= 1e-2 on logits, a few bf16 ulps; measured ~2e-3."""
    model = make_model(merge).to(torch.bfloat16)
    x = make_inputs(LENGTHS)
    x = dataclasses.replace(x, events=x.events.bfloat16(), user=x.user.bfloat16(), dense=x.dense.bfloat16())
    candidates = torch.randn(len(LENGTHS), 4, DIMS.candidate).bfloat16()
    cached = score(model, prefill(model, x), candidates).float()
    with torch.no_grad():
        for c in range(4):
            full = model(dataclasses.replace(x, candidate=candidates[:, c])).float()
            torch.testing.assert_close(cached[:, c], full, atol=1e-2, rtol=0)
