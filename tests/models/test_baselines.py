"""Baselines: FLOPs agree with FlopCounterMode, and each uses exactly the inputs it should."""

import dataclasses

import pytest
import torch
from longer_inputs import DIMS, TRANSFORMER, make_inputs, make_model
from torch.utils.flop_counter import FlopCounterMode

from longer_train.config import ModelConfig
from longer_train.models.baselines import DIN, NoSequence, SumPooling
from longer_train.models.candidate_match import pair_similarity, unit_pairs

LENGTHS = [0, 5, 64, 17]


def _baseline(cls):
    torch.manual_seed(0)
    return cls(ModelConfig(token_dim=8, head_hidden=[16], din_hidden=[12, 6], candidate_match="attention_readout"),
               DIMS).eval()


@pytest.mark.parametrize("cls", [NoSequence, SumPooling, DIN])
def test_flops_match_flop_counter(cls):
    model = _baseline(cls)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(make_inputs(LENGTHS))
    measured = counter.get_total_flops()
    assert abs(model.flops(LENGTHS) - measured) / measured < 0.05


@torch.no_grad()
def test_no_sequence_ignores_the_history():
    model = _baseline(NoSequence)
    x = make_inputs(LENGTHS)
    other = dataclasses.replace(x, events=torch.randn_like(x.events))
    torch.testing.assert_close(model(x), model(other), rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("cls", [SumPooling, DIN])
def test_pooling_baselines_read_the_history(cls):
    model = _baseline(cls)
    x = make_inputs(LENGTHS)
    changed = model(dataclasses.replace(x, events=torch.randn_like(x.events))) != model(x)
    assert changed[1:].all() and not changed[0]  # row 0 has an empty history


@torch.no_grad()
def test_din_weights_depend_on_the_candidate():
    model = _baseline(DIN)
    x = make_inputs([6])
    tokens = torch.randn(6, 8)
    a, b = torch.randn(1, 8).expand(6, 8), torch.randn(1, 8).expand(6, 8)
    match = torch.zeros(6, len(model.match_pairs))
    assert not torch.allclose(model.weights(tokens, a, match), model.weights(tokens, b, match))
    assert not torch.allclose(model.weights(tokens, a, match), model.weights(tokens, a, match + 1))
    assert model(x).shape == (1,)


def test_transformer_baseline_is_longer_without_merge_and_all_queries():
    model = make_model(**TRANSFORMER)
    states = model.encode(make_inputs(LENGTHS))
    assert states.merged.shape[1] == max(LENGTHS)  # no merge
    assert states.layers[0].shape[1] == max(LENGTHS) + model.num_globals  # every position is a query


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_transformer_baseline_runs_its_first_layer_as_self_attention_exactly(impl):
    """With every position a query the cross layer is self-attention over the tokens (normed and projected
    once); it gives the logits and gradients of gathering every position as a query at its own position (the
    `uniform` rule takes all of a row's tokens when k >= its length: the path with separate query tokens)."""
    x = make_inputs(LENGTHS)
    results = []
    for rule in ("recent", "uniform"):
        model = make_model(**TRANSFORMER, query_selection=rule, attention_impl=impl).train()
        logits = model(x)
        logits.sum().backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(*(grads for _, grads in results)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("cls", [SumPooling, DIN])
def test_pool_norm_length_and_softmax_normalise_each_row(cls):
    """`length` divides the pooled sum by the row's length; `softmax` makes each row's weights sum to 1
    (SumPooling: then both are the mean). Recomputed here row by row from the model's own pieces."""
    x = make_inputs(LENGTHS)
    outputs = {}
    for norm in ("none", "length", "softmax"):
        torch.manual_seed(0)
        model = cls(ModelConfig(token_dim=8, head_hidden=[16], din_hidden=[12, 6], pool_norm=norm,
                                candidate_match="attention_readout"), DIMS).eval()
        pooled = {}
        model.head.register_forward_hook(lambda m, args, out, pooled=pooled: pooled.update(x=args[0][:, :8]))
        outputs[norm] = model(x)
        outputs[norm, "pooled"] = pooled["x"]
    lengths = torch.tensor(LENGTHS, dtype=torch.float32)[:, None]
    torch.testing.assert_close(outputs["length", "pooled"], outputs["none", "pooled"] / lengths.clamp(min=1))
    assert outputs["softmax", "pooled"][0].abs().sum() == 0  # the empty row
    if cls is SumPooling:
        torch.testing.assert_close(outputs["softmax", "pooled"], outputs["length", "pooled"])
    else:
        model.cfg.pool_norm = "none"
        n, row = x.events.shape[0], torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))
        recency = torch.cumsum(torch.tensor(LENGTHS), 0)[row] - 1 - torch.arange(n)
        tokens = model.tokens(x.events, x.time_diff, recency)
        pairs = model.match_pairs
        match = pair_similarity(unit_pairs(x.events, pairs, "event"), unit_pairs(x.candidate, pairs, "candidate")[row],
                                pairs)
        scores = model.weights(tokens, model.candidate_token(x.candidate)[row], match)
        for r, length in enumerate(LENGTHS):
            if length:
                w = torch.softmax(scores[row == r, 0], 0)
                torch.testing.assert_close(outputs["softmax", "pooled"][r], (w[:, None] * tokens[row == r]).sum(0))
