"""The candidate match (models/candidate_match.py): cosine similarity in the shared embedding space, summed
per merged token exactly, independent of the tables' scale, and what reaches LONGER's candidate row."""

import dataclasses

import pytest
import torch
from longer_inputs import DIMS, make_inputs, make_model

from longer_train.models.candidate_match import MatchPair, group_similarity, pair_similarity, unit_pairs
from longer_train.models.token_merge import to_left_padded

LENGTHS = [0, 3, 17, 64, 40]
PAIRS = DIMS.match_pairs


def _event_cosines(x, pairs):
    """Each event's cosine to its row's candidate, per pair, straight from the definition."""
    row = torch.repeat_interleave(torch.arange(len(x.lengths)), x.lengths)
    cols = []
    for p in pairs:
        e = x.events[:, p.event_offset: p.event_offset + p.width]
        c = x.candidate[row, p.candidate_offset: p.candidate_offset + p.width]
        cols.append(torch.nn.functional.cosine_similarity(e, c, dim=-1))
    return torch.stack(cols, -1)


@torch.no_grad()
def test_similarity_of_a_merged_token_is_the_sum_of_its_events_cosines(merge):
    model = make_model(merge, candidate_match="attention")
    x = make_inputs(LENGTHS)
    merged, num_pad, groups, _ = model.encode_sequence(x)
    sim = model.candidate_similarity(groups, x.candidate.unsqueeze(1))[:, 0]  # [B, L', P]
    padded, _ = to_left_padded(_event_cosines(x, PAIRS), x.lengths, merged.shape[1] * model.cfg.merge_k)
    expected = padded.reshape(len(LENGTHS), merged.shape[1], model.cfg.merge_k, len(PAIRS)).sum(2)
    torch.testing.assert_close(sim, expected, atol=1e-5, rtol=0)
    pad = torch.arange(merged.shape[1])[None, :] < num_pad[:, None]
    assert (sim[pad] == 0).all()


def test_unit_pairs_match_f_normalize_values_and_gradients():
    """unit_pairs (its hand-written backward) is F.normalize of each pair's slice: the same outputs and input
    gradients as F.normalize in float64, to float32 precision relative to each row's largest gradient (the
    gradient of a short row is large and its entries cancel), over rows of every scale (TorchRec's tables
    differ ~100x), rows shorter than eps (an all-zero embedding), columns outside every pair (gradient 0) and
    two pairs reading the same columns (summed)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 40, generator=gen) * torch.logspace(-4, 2, 64)[:, None]
    x[5] = 0.0
    x[6, :16] = 1e-10
    pairs = (MatchPair(0, 0, 16), MatchPair(0, 24, 16), MatchPair(0, 0, 16))  # columns 16..23 in no pair
    grad = torch.randn(64, 48, generator=gen)
    normalize = lambda t: torch.nn.functional.normalize(t, dim=-1, eps=1e-8)
    results = []
    for fn, dtype in ((lambda t: unit_pairs(t, pairs, "event"), torch.float32),
                      (lambda t: torch.cat([normalize(t[:, :16]), normalize(t[:, 24:]), normalize(t[:, :16])], -1),
                       torch.float64)):
        leaf = x.to(dtype, copy=True).requires_grad_()
        out = fn(leaf)
        out.backward(grad.to(dtype))
        results.append((out.double(), leaf.grad.double()))
    (out, grad_x), (expected, expected_grad) = results
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    row_scale = expected_grad.abs().amax(-1, keepdim=True)
    assert ((grad_x - expected_grad).abs() <= 1e-5 * row_scale).all()
    assert (grad_x[:, 16:24] == 0).all()
    with torch.no_grad():  # no autograd: the same values
        assert torch.equal(unit_pairs(x, pairs, "event").double(), out.detach())


def test_similarity_ignores_the_tables_scale_and_is_one_for_the_same_id():
    events = torch.randn(6, DIMS.event)
    candidate = events[:, :DIMS.candidate].clone()  # each event's item and category are its candidate's
    sim = pair_similarity(unit_pairs(events, PAIRS, "event"), unit_pairs(candidate, PAIRS, "candidate"), PAIRS)
    torch.testing.assert_close(sim, torch.ones(6, 2))
    small = pair_similarity(unit_pairs(events * 1e-3, PAIRS, "event"),
                            unit_pairs(torch.randn(6, DIMS.candidate) * 1e-3, PAIRS, "candidate"), PAIRS)
    big = pair_similarity(unit_pairs(events, PAIRS, "event"),
                          unit_pairs(torch.randn(6, DIMS.candidate), PAIRS, "candidate"), PAIRS)
    assert small.abs().max() <= 1 + 1e-6 and big.abs().max() <= 1 + 1e-6
    units, candidates = unit_pairs(events, PAIRS, "event"), unit_pairs(candidate, PAIRS, "candidate")
    batched = group_similarity(units[None], candidates[None], PAIRS)  # [1, 6 candidates, 6 events, P]
    torch.testing.assert_close(torch.diagonal(batched[0], dim1=0, dim2=1).T, sim)


@torch.no_grad()
@pytest.mark.parametrize("mode", ["none", "attention", "attention_readout"])
def test_candidate_match_reaches_the_candidate_row_only(mode):
    """Giving the candidate the item of one of its row's events changes only that row's candidate state (and
    its logit), and only when the match is on; every sequence-side and user-side state stays bit-identical."""
    model = make_model("concat", candidate_match=mode)
    x = make_inputs(LENGTHS)
    row, event = 3, 60  # an event of row 3 (64 events), in the newest merged tokens
    start = sum(LENGTHS[:row]) + event
    candidate = x.candidate.clone()
    candidate[row, :4] = x.events[start, :4] * 0.5  # the same item, another scale: cosine 1
    moved = dataclasses.replace(x, candidate=candidate)
    a, b = model.encode(x), model.encode(moved)
    for layer_a, layer_b in zip(a.layers, b.layers):
        torch.testing.assert_close(layer_a[:, :-1], layer_b[:, :-1], rtol=0, atol=0)
    changed = (a.layers[-1][:, -1] - b.layers[-1][:, -1]).abs().amax(-1) > 1e-6
    assert changed.tolist() == [r == row for r in range(len(LENGTHS))]
    if mode == "attention_readout":
        assert b.match_readout.shape == (len(LENGTHS), model.attention.cross.heads * 2)
        assert (b.match_readout[row, 0::2] > a.match_readout[row, 0::2]).all()  # more of its item attended
    else:
        assert a.match_readout is None
