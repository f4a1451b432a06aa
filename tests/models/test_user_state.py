"""The scoring interface (models/user_state.py), for every model of the paper's Table 1: `score(prefill(x))`
equals the training forward of each (user, candidate) row within 1e-5 (ragged histories, an empty one
included, with and without the candidate match); a batch's state split into users and stacked back in another
order and padding scores the same; only the causal models declare cached scoring. LONGER's cached scores
also for every query-selection rule, k below, at and above the merged length, and in bf16."""

import dataclasses

import pytest
import torch
from longer_inputs import DIMS, TABLE1, TRANSFORMER, make_inputs, make_model, make_table1_model

from longer_train.config import QUERY_RULES
from longer_train.models.inputs import DenseInputs
from longer_train.models.user_state import AppendableModel, ServableModel, UserState, split_users, stack_users

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


def _history(events: torch.Tensor, times: torch.Tensor, now: int, start: int, end: int, seed: int = 3):
    """One user (one row) whose history is events[start:end] (times: their int64 unix seconds, oldest first) at
    request time `now`; the same user and dense features whatever the slice."""
    g = torch.Generator().manual_seed(seed)
    return DenseInputs(events=events[start:end], lengths=torch.tensor([end - start]), time_diff=now - times[start:end],
                       candidate=torch.zeros(1, DIMS.candidate), user=torch.randn(1, DIMS.user, generator=g),
                       dense=torch.randn(1, DIMS.dense, generator=g))


STREAM = {  # the models that append under model.stream_tokens (LONGER and the Transformer), K = 4 unless noted
    "longer": {}, "longer_inner_trans": dict(merge="inner_trans"), "transformer": TRANSFORMER,
    "longer_match": dict(candidate_match="attention_readout"), "longer_uniform": dict(query_selection="uniform"),
    "longer_learnable": dict(query_selection="learnable"), "longer_k8": dict(num_queries=8),
}


# (events the kept state holds, events now); with K = 4 and k = 3 queries: (5, 6) and (8, 9) keep the query
# window where it was, (30, 34) moves it by one (one cross-layer state kept), (12, 31) and (30, 64) far
COVERED = [(0, 3), (5, 6), (6, 9), (8, 9), (30, 34), (12, 31), (30, 64)]


@torch.no_grad()
@pytest.mark.parametrize("name, covered, total", [
    *[(name, *c) for name in ("longer", "longer_inner_trans") for c in COVERED],  # every case for both merges
    *[(name, *c) for name in sorted(STREAM) if name not in ("longer", "longer_inner_trans") for c in COVERED[2::2]],
])
def test_appended_state_equals_a_fresh_prefill(name, covered, total):
    """A returning user: the state of its first `covered` events (an earlier request) extended by the newer
    events at a later request equals the state prefill gives for the whole history — every tensor, and the scores
    — within 1e-5. (5, 6) and (6, 9) fill a merge group across requests (K = 4; (6, 9) also spills into the
    next); (8, 9) starts a new group; (0, 3) extends an empty history; the recent rule's reuse of the layers'
    states (`HybridAttention.extend`) is checked by the window cases above."""
    model = make_model(**{**STREAM[name], "stream_tokens": True})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # zero biases would hide what padding could leak
    assert model.serving.appends and isinstance(model, AppendableModel)
    g = torch.Generator().manual_seed(11)
    events = torch.randn(total, DIMS.event, generator=g)
    times = 1_700_000_000 + torch.cumsum(torch.randint(0, 5_000, (total,), generator=g), 0)
    earlier, later = int(times[covered - 1]) + 10 if covered else 0, int(times[-1]) + 86_400
    state = split_users(model.prefill(_history(events, times, max(earlier, 1_700_000_000), 0, covered)))[0]
    start = model.append_start(covered)
    appended = model.append(state, _history(events, times, later, start, total), covered)
    fresh = split_users(model.prefill(_history(events, times, later, 0, total)))[0]
    assert appended.tensors.keys() == fresh.tensors.keys()
    for key in fresh.tensors:
        torch.testing.assert_close(appended[key], fresh[key], atol=1e-5, rtol=0, msg=key)
    candidates = _candidates(1, 5)
    torch.testing.assert_close(model.score(appended, candidates), model.score(fresh, candidates), atol=1e-5, rtol=0)
    for c in range(5):  # and the training forward of the whole history
        full = model(dataclasses.replace(_history(events, times, later, 0, total), candidate=candidates[:, c]))
        torch.testing.assert_close(model.score(appended, candidates)[:, c], full, atol=1e-5, rtol=0)


@torch.no_grad()
def test_stream_tokens_do_not_change_with_newer_events_or_the_request_time():
    """Under model.stream_tokens the cross layer's keys of a history's full merge groups are the same whatever
    events follow and whenever the request comes; under the paper's tokens none is (what rules append out)."""
    g = torch.Generator().manual_seed(5)
    events = torch.randn(20, DIMS.event, generator=g)
    times = 1_700_000_000 + torch.cumsum(torch.randint(1, 5_000, (20,), generator=g), 0)
    for stream in (True, False):
        model = make_model(stream_tokens=stream)
        short = model.prefill(_history(events, times, int(times[11]) + 5, 0, 12))["k0"][:, :, -3 - 3:-3]
        long = model.prefill(_history(events, times, int(times[-1]) + 999, 0, 20))["k0"][:, :, -5 - 3:-5]
        assert torch.allclose(short, long, atol=1e-6) == stream  # 12 events: 3 groups; 20: 5 (3 globals after)
    with pytest.raises(ValueError, match="stream_tokens"):
        make_model().append(split_users(make_model().prefill(make_inputs([4])))[0], make_inputs([5]), 4)


@torch.no_grad()
@pytest.mark.parametrize("name", ["longer", "longer_inner_trans", "longer_match", "transformer"])
def test_stream_tokens_batch_forward_equals_each_row_alone(name):
    """The stream layout in a ragged batch (groups aligned to each row's oldest event, the newest group's unfilled
    end padded; length chunks on) gives each row's logit as that row alone does."""
    model = make_model(**{**STREAM[name], "stream_tokens": True, "length_chunks": 4})
    x = make_inputs(LENGTHS)
    batch = model(x)
    first = 0
    for i, n in enumerate(LENGTHS):
        row = DenseInputs(x.events[first : first + n], x.lengths[i : i + 1], x.time_diff[first : first + n],
                          x.candidate[i : i + 1], x.user[i : i + 1], x.dense[i : i + 1])
        torch.testing.assert_close(model(row), batch[i : i + 1], atol=1e-5, rtol=0)
        first += n
