"""The scoring interface (models/user_state.py), for every model of the paper's Table 1: `score(prefill(x))`
equals the training forward of each (user, candidate) row within 1e-5 (ragged histories, an empty one
included, with and without the candidate match); a batch's state split into users and stacked back in another
order and padding scores the same; only the causal models declare cached scoring. LONGER's cached scores
also for every query-selection rule, k below, at and above the merged length, and in bf16."""

import dataclasses

import pytest
import torch
from longer_inputs import DIMS, TABLE1, make_inputs, make_model, make_table1_model

from longer_train.config import QUERY_RULES
from longer_train.models.user_state import ServableModel, UserState, split_users, stack_users

LENGTHS = [0, 3, 17, 64, 40]


def _candidates(users: int, count: int) -> torch.Tensor:
    return torch.randn(users, count, DIMS.candidate, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
@pytest.mark.parametrize("match", ["none", "attention_readout"])
@pytest.mark.parametrize("name", sorted(TABLE1))
def test_scores_equal_the_training_forward(name, match):
    model = make_table1_model(name, candidate_match=match)
    assert isinstance(model, ServableModel)
    users = make_inputs(LENGTHS)
    candidates = _candidates(len(LENGTHS), 6)
    scores = model.score(model.prefill(users), candidates)  # [U, C]
    assert scores.shape == (len(LENGTHS), 6)
    for c in range(candidates.shape[1]):
        full = model(dataclasses.replace(users, candidate=candidates[:, c]))
        torch.testing.assert_close(scores[:, c], full, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("name", sorted(TABLE1))
def test_split_and_stacked_states_score_the_same(name):
    """What serving's cache does: one state per user (trimmed of padding), then users of different batches
    stacked into one (padded again, to another length)."""
    model = make_table1_model(name)
    users = make_inputs(LENGTHS)
    state = model.prefill(users)
    candidates = _candidates(len(LENGTHS), 4)
    expected = model.score(state, candidates)
    alone = split_users(state)
    assert all(isinstance(s, UserState) and s.num_users == 1 for s in alone)
    assert sum(s.nbytes for s in alone) <= state.nbytes
    for u, single in enumerate(alone):
        torch.testing.assert_close(model.score(single, candidates[u : u + 1]), expected[u : u + 1], atol=1e-5, rtol=0)
    order = [3, 0, 4, 1, 2]
    restacked = stack_users([alone[i] for i in order])
    torch.testing.assert_close(model.score(restacked, candidates[order]), expected[order], atol=1e-5, rtol=0)
    # a state padded to a longer history than any of its users (a batch with a longer user, then split off)
    longer = stack_users([model.prefill(make_inputs([64 + 3], seed=5)), alone[1]])
    torch.testing.assert_close(model.score(longer, candidates[[0, 1]])[1], expected[1], atol=1e-5, rtol=0)


def test_the_causal_models_declare_cached_scoring():
    cached = {name for name in TABLE1 if make_table1_model(name).serving.cached}
    assert cached == {"longer", "longer_inner_trans", "transformer", "hstu"}


@torch.no_grad()
@pytest.mark.parametrize("rule", QUERY_RULES)
@pytest.mark.parametrize("match", ["none", "attention", "attention_readout"])
@pytest.mark.parametrize("k", [1, 3, 8, 100])
def test_longer_cached_scores_for_every_query_rule(merge, k, match, rule):
    model = make_model(merge, num_queries=k, candidate_match=match, query_selection=rule)
    users = make_inputs(LENGTHS)  # merged lengths 0, 1, 5, 16, 10 with K = 4
    candidates = _candidates(len(LENGTHS), 6)
    cached = model.score(model.prefill(users), candidates)
    for c in range(candidates.shape[1]):
        full = model(dataclasses.replace(users, candidate=candidates[:, c]))
        torch.testing.assert_close(cached[:, c], full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_longer_cached_scores_in_bf16_are_within_the_documented_tolerance(merge):
    """bf16 tolerance (docs/serving.md): |cached - full| <= 1e-2 on logits, a few bf16 ulps; measured ~2e-3."""
    model = make_model(merge).to(torch.bfloat16)
    x = make_inputs(LENGTHS)
    x = dataclasses.replace(x, events=x.events.bfloat16(), user=x.user.bfloat16(), dense=x.dense.bfloat16())
    candidates = _candidates(len(LENGTHS), 4).bfloat16()
    cached = model.score(model.prefill(x), candidates).float()
    for c in range(4):
        full = model(dataclasses.replace(x, candidate=candidates[:, c])).float()
        torch.testing.assert_close(cached[:, c], full, atol=1e-2, rtol=0)
