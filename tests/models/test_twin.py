"""TWIN (models/twin.py): the general search unit's top-k on ragged rows (empty, shorter than k, longer), the
exact search unit over exactly those events, a non-differentiable selection, the candidate match in both
stages, and FLOPs."""

import dataclasses

import pytest
import torch
from longer_inputs import DIMS, flops_error, make_inputs

from longer_train.config import ModelConfig
from longer_train.models.candidate_match import pair_similarity, unit_pairs
from longer_train.models.inputs import event_rows
from longer_train.models.twin import TWIN, top_k_per_row

LENGTHS = [0, 3, 64, 17, 10]  # empty, shorter than k = 10, longer, exactly k
MATCH = ["none", "attention", "attention_readout"]


def make_twin(**overrides) -> TWIN:
    torch.manual_seed(0)
    settings = dict(token_dim=8, head_dim=4, twin_top_k=10, head_hidden=[16])
    model = TWIN(ModelConfig(**{**settings, **overrides}), DIMS).eval()
    with torch.no_grad():  # as if trained: zero-initialised parameters would hide what padded slots could leak
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _gsu_scores(model: TWIN, x) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed events' rows and the heads' mean score the general search unit ranks them by."""
    row, recency = event_rows(x.lengths, x.events.shape[0])
    tokens = model.tokens(x.events, x.time_diff, recency)
    pairs = model.match_pairs
    match = pair_similarity(unit_pairs(x.events, pairs, "event"), unit_pairs(x.candidate, pairs, "candidate")[row],
                            pairs) if pairs else tokens.new_zeros((len(row), 0))
    return row, model.attention.scores(tokens, model.candidate_token(x.candidate), row, match).mean(-1)


@pytest.mark.parametrize("k", [1, 4, 10, 100])
def test_top_k_per_row_on_ragged_rows(k):
    """Each row's selection is its min(k, length) highest-scoring events, by brute force per row; a row
    shorter than k keeps all its events and its other slots are marked invalid; an empty row selects none."""
    lengths = torch.tensor(LENGTHS)
    scores = torch.randn(sum(LENGTHS), generator=torch.Generator().manual_seed(0))
    index, valid = top_k_per_row(scores, lengths, k)
    assert index.shape == valid.shape == (len(LENGTHS), min(k, max(LENGTHS)))
    start = 0
    for r, length in enumerate(LENGTHS):
        kept = min(k, length)
        assert valid[r].tolist() == [True] * kept + [False] * (index.shape[1] - kept)
        expected = (start + torch.argsort(scores[start: start + length], descending=True)[:kept]).tolist()
        assert index[r, :kept].tolist() == expected
        start += length
    assert top_k_per_row(torch.zeros(0), torch.tensor([0, 0]), k)[0].shape == (2, 0)


@pytest.mark.parametrize("match", MATCH)
def test_only_the_selected_events_get_gradients(match):
    """The top-k is not differentiable: the events outside each row's top k get exactly zero gradient, the
    selected ones do get one (the scores of the ESU are the GSU's own)."""
    model = make_twin(candidate_match=match).train()
    x = make_inputs(LENGTHS)
    x.events.requires_grad_(True)
    model(x).sum().backward()
    with torch.no_grad():
        index, valid = top_k_per_row(_gsu_scores(model, x)[1], x.lengths, model.top_k)
    selected = torch.zeros(sum(LENGTHS), dtype=torch.bool)
    selected[index[valid]] = True
    has_grad = x.events.grad.abs().sum(1) > 0
    assert has_grad.tolist() == selected.tolist()
    assert selected.sum() == sum(min(10, n) for n in LENGTHS)


@torch.no_grad()
def test_top_1_attends_to_the_best_event_only():
    """With k = 1 the exact search unit's softmax has one event: its output is that event's value projected,
    and an empty row's is the output projection of zero."""
    model = make_twin(twin_top_k=1, candidate_match="none")
    x = make_inputs(LENGTHS)
    pooled = {}
    model.head.register_forward_hook(lambda m, args, out: pooled.update(x=args[0][:, :8]))
    model(x)
    row, scores = _gsu_scores(model, x)
    tokens = model.tokens(x.events, x.time_diff, event_rows(x.lengths, x.events.shape[0])[1])
    att = model.attention
    for r, length in enumerate(LENGTHS):
        if length:
            best = torch.nonzero(row == r)[scores[row == r].argmax()]
            expected = att.out(att.v(tokens[best]))[0]
        else:
            expected = att.out(torch.zeros(8))
        torch.testing.assert_close(pooled["x"][r], expected)


@torch.no_grad()
@pytest.mark.parametrize("match", MATCH)
def test_a_row_shorter_than_k_attends_to_all_its_events_whatever_k(match):
    """Rows with at most k events give the same output for every k >= their length (the extra slots are
    masked), and each row's logit does not depend on the other rows of the batch."""
    x = make_inputs(LENGTHS)
    logits = {k: make_twin(twin_top_k=k, candidate_match=match)(x) for k in (17, 64, 1000)}
    short = [r for r, n in enumerate(LENGTHS) if n <= 17]
    torch.testing.assert_close(logits[17][short], logits[64][short], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits[64], logits[1000], rtol=0, atol=0)
    model = make_twin(candidate_match=match)
    batched = model(x)
    starts = torch.cumsum(x.lengths, 0) - x.lengths
    for i, n in enumerate(LENGTHS):
        s = int(starts[i])
        alone = dataclasses.replace(x, events=x.events[s: s + n], lengths=x.lengths[i: i + 1],
                                    time_diff=x.time_diff[s: s + n], candidate=x.candidate[i: i + 1],
                                    user=x.user[i: i + 1], dense=x.dense[i: i + 1])
        torch.testing.assert_close(batched[i: i + 1], model(alone), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_the_candidate_match_enters_the_search():
    """An event of the candidate's item and category is what the general search unit keeps first once the
    similarities' weight is large: the selection uses the ESU's scores including the candidate match."""
    model = make_twin(twin_top_k=1, candidate_match="attention")
    model.attention.match_weight.fill_(50.0)
    x = make_inputs(LENGTHS)
    row, event = 2, 7
    start = sum(LENGTHS[:row]) + event
    candidate = x.candidate.clone()
    candidate[row] = x.events[start, :8] * 3.0  # its item and category, at another scale
    x = dataclasses.replace(x, candidate=candidate)
    index, _ = top_k_per_row(_gsu_scores(model, x)[1], x.lengths, 1)
    assert index[row, 0] == start


@pytest.mark.parametrize("match", MATCH)
@pytest.mark.parametrize("lengths", [[64], LENGTHS, [0, 0], [3, 3]])
def test_flops_match_flop_counter(lengths, match):
    assert flops_error(make_twin(candidate_match=match), lengths) < 0.05
