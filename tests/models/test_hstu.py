"""HSTU (models/hstu.py): the layer against its formula, the tiled attention and its gradients against a plain
reference, causality (the history never sees the candidate or
a newer event, so its states are cacheable), no dependence on padding or batch-mates, FLOPs, recomputation."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from longer_inputs import DIMS, flops_error, make_inputs

from longer_train.config import ModelConfig
from longer_train.distributed.parallelize import apply_recompute
from longer_train.models.hstu import HSTU, HSTULayer, history_attention, pair_index
from longer_train.models.token_builder import time_diff_bucket

RAGGED = [0, 1, 5, 13, 30, 64, 7]
MATCH = ["none", "attention", "attention_readout"]


def make_hstu(**overrides) -> HSTU:
    torch.manual_seed(0)
    settings = dict(token_dim=8, head_dim=4, hstu_layers=2, head_hidden=[16])
    model = HSTU(ModelConfig(**{**settings, **overrides}), DIMS).eval()
    with torch.no_grad():  # as if trained: zero-initialised biases would hide what padding could leak
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@torch.no_grad()
def test_layer_follows_the_hstu_formula():
    """One row without padding, recomputed position by position from the formula in the module docstring:
    y_i = x_i + W_o(u_i ⊙ Norm(Σ_{j<=i} SiLU(q_i·k_j/√d + w_pos[i-j] + w_time[bucket(t_i - t_j)]) v_j / N))."""
    model = make_hstu(candidate_match="none")
    x = make_inputs([9])
    layer = model.layers[0]
    states = model.encode(x).layers[0][0]  # [10, d]
    tokens = model.tokens(x.events, x.time_diff, torch.arange(8, -1, -1))
    inputs = torch.cat([tokens, model.candidate_token(x.candidate)])  # [10, d]
    ago = torch.cat([x.time_diff, torch.zeros(1, dtype=x.time_diff.dtype)])
    u, v, q, k = F.silu(layer.uvqk(layer.norm_in(inputs))).chunk(4, dim=-1)
    heads, dh = layer.heads, layer.head_dim
    for i in range(10):
        attn = []
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            total = torch.zeros(dh)
            for j in range(i + 1):
                score = q[i, cols] @ k[j, cols] / math.sqrt(dh) + layer.position_bias[i - j]
                score = score + layer.time_bias[time_diff_bucket(ago[j] - ago[i], model.cfg.time_buckets)]
                total = total + F.silu(score) * v[j, cols] / (DIMS.max_len + 1)
            attn.append(total)
        expected = inputs[i] + layer.out(u[i] * layer.norm_attn(torch.cat(attn)))
        torch.testing.assert_close(states[i], expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("match", MATCH)
def test_the_candidate_changes_only_its_own_row(match):
    """A different candidate changes the candidate's row (and logit) only: every history state of every layer
    stays bit-identical, which is what lets a server compute a user's history once for all candidates."""
    model = make_hstu(candidate_match=match)
    x = make_inputs(RAGGED)
    other = dataclasses.replace(x, candidate=torch.randn_like(x.candidate))
    a, b = model.encode(x), model.encode(other)
    for layer_a, layer_b in zip(a.layers, b.layers):
        torch.testing.assert_close(layer_a[:, :-1], layer_b[:, :-1], rtol=0, atol=0)
        assert ((layer_a[:, -1] - layer_b[:, -1]).abs().amax(-1) > 1e-4).all()
    assert (model(x) != model(other)).all()


@torch.no_grad()
def test_the_history_never_sees_newer_events():
    """Changing one event changes its own row's states from that event's position on, and nothing older or in
    any other row."""
    model = make_hstu()
    x = make_inputs(RAGGED)
    row, event = 5, 40  # row 5 holds 64 events: the longest, so its positions are not shifted by padding
    start = sum(RAGGED[:row]) + event
    events = x.events.clone()
    events[start] += 1.0
    a, b = model.encode(x), model.encode(dataclasses.replace(x, events=events))
    for layer_a, layer_b in zip(a.layers, b.layers):
        others = [r for r in range(len(RAGGED)) if r != row]
        torch.testing.assert_close(layer_a[others], layer_b[others], rtol=0, atol=0)
        torch.testing.assert_close(layer_a[row, :event], layer_b[row, :event], rtol=0, atol=0)
        assert ((layer_a[row, event:] - layer_b[row, event:]).abs().amax(-1) > 1e-6).all()


@torch.no_grad()
@pytest.mark.parametrize("match", MATCH)
def test_each_row_is_computed_as_if_alone(match):
    """In a ragged batch each row's valid states and logit equal those of the row run alone (no padding): the
    padding is masked, and the 1/N normalisation does not depend on the batch."""
    model = make_hstu(candidate_match=match)
    x = make_inputs(RAGGED)
    batched, logits = model.encode(x), model(x)
    starts = torch.cumsum(x.lengths, 0) - x.lengths
    for i, length in enumerate(RAGGED):
        s = int(starts[i])
        alone = dataclasses.replace(
            x, events=x.events[s: s + length], lengths=x.lengths[i: i + 1], time_diff=x.time_diff[s: s + length],
            candidate=x.candidate[i: i + 1], user=x.user[i: i + 1], dense=x.dense[i: i + 1],
        )
        single = model.encode(alone)
        for layer_b, layer_s in zip(batched.layers, single.layers):
            torch.testing.assert_close(layer_b[i, layer_b.shape[1] - length - 1:], layer_s[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[i: i + 1], model(alone), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_candidate_matching_an_event_raises_the_readout():
    """Giving the candidate the item of one of its row's events raises the similarity its row attended to (the
    item pair of every head), through the candidate match only."""
    model = make_hstu(candidate_match="attention_readout")
    x = make_inputs(RAGGED)
    row, event = 3, 10
    candidate = x.candidate.clone()
    candidate[row, :4] = x.events[sum(RAGGED[:row]) + event, :4] * 0.5  # the same item at another scale
    a, b = model.encode(x), model.encode(dataclasses.replace(x, candidate=candidate))
    assert a.match_readout.shape == (len(RAGGED), model.layers[0].heads * 2)
    assert (b.match_readout[row, 0::2] > a.match_readout[row, 0::2]).all()
    others = [r for r in range(len(RAGGED)) if r != row]
    torch.testing.assert_close(a.match_readout[others], b.match_readout[others], rtol=0, atol=0)


@pytest.mark.parametrize("match", MATCH)
@pytest.mark.parametrize("lengths", [[64], [5, 64, 0, 17], [0, 0]])
def test_flops_match_flop_counter(lengths, match):
    assert flops_error(make_hstu(candidate_match=match), lengths) < 0.05


def test_gradients_are_finite_with_empty_histories_and_recompute_changes_none():
    grads = []
    for recompute in (False, True):
        model = make_hstu().train()
        if recompute:  # parallel.recompute=self (and all) recomputes the HSTU layers
            apply_recompute(model, "self")
        x = make_inputs([0, 3, 64, 0])
        x.events.requires_grad_(True)
        model(x).square().sum().backward()
        grads.append([x.events.grad, *(p.grad for p in model.parameters())])
    assert all(torch.isfinite(g).all() for g in grads[0]) and grads[0][0].abs().sum() > 0
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=0, atol=0)


def reference_history_attention(q, k, v, layer: HSTULayer, ago, seen, num_buckets: int, max_len: int):
    """The history's attention as a plain formula over materialised [B, 1, n, n] tensors: SiLU(q k^T + w_pos[i - j]
    + w_time[bucket(t_i - t_j)]) v where key j is at or before query i and not padding, else 0."""
    n = q.shape[2]
    positions = torch.arange(n)
    distance = (positions[:, None] - positions[None, :]).clamp(0, max_len)
    bucket = time_diff_bucket(ago[:, None, :n] - ago[:, :n, None], num_buckets)  # [B, n, n]
    bias = (layer.position_bias[distance] + layer.time_bias[bucket]).unsqueeze(1)
    allowed = (positions[:, None] >= positions[None, :]) & seen[:, None, :n]
    weights = torch.where(allowed.unsqueeze(1), F.silu(q @ k.transpose(-1, -2) + bias), 0.0)
    return weights @ v


@pytest.mark.parametrize("block", [1, 4, 7, 64])
def test_history_attention_and_its_gradients_match_the_reference(block):
    """The tiled history attention (the bias and causal mask one gather from the bias table, padding keys masked
    by zeroed values, scores recomputed in the backward) gives the reference's output and the same gradients for
    q, k, v and both biases, in float64, on ragged rows with unsorted times, for tiles that do and do not divide
    the history."""
    torch.manual_seed(0)
    b, heads, dh, n, max_len, buckets = 3, 2, 4, 13, 15, 16
    layer = HSTULayer(heads * dh, heads, dh, max_len, buckets, "layernorm", 0.0).double()
    with torch.no_grad():
        layer.position_bias.normal_()
        layer.time_bias.normal_()
    q, k, v = (torch.randn(b, heads, n, dh, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ago = torch.randint(0, 10**6, (b, n + 1))
    ago[:, -1] = 0  # the candidate
    seen = torch.arange(n + 1)[None, :] >= torch.tensor([0, 5, 12])[:, None]  # left padding; row 2: one event
    pairs = pair_index(ago, seen, buckets, max_len, block)
    ours = history_attention(q, k, v * seen[:, None, :n, None], layer.bias_table(), pairs.history)
    ref = reference_history_attention(q, k, v, layer, ago, seen, buckets, max_len)
    torch.testing.assert_close(ours, ref)
    params = (q, k, v, layer.position_bias, layer.time_bias)
    upstream = torch.randn_like(ref)
    for mine, theirs in zip(torch.autograd.grad(ours, params, upstream), torch.autograd.grad(ref, params, upstream)):
        torch.testing.assert_close(mine, theirs)
