"""Properties of the dense LONGER network: causality, padding, query selection (every rule), ragged merge."""

import dataclasses

import pytest
import torch
from longer_inputs import TRANSFORMER, make_inputs, make_model

from longer_train.config import QUERY_RULES
from longer_train.models.hybrid_attention import query_positions
from longer_train.models.token_builder import TokenBuilder, time_diff_bucket
from longer_train.models.token_merge import TokenMerge, to_left_padded

RAGGED = [0, 1, 5, 13, 30, 64, 7]  # empty, shorter than K, not multiples of K, the max


@torch.no_grad()
@pytest.mark.parametrize("rule", QUERY_RULES)
@pytest.mark.parametrize("field, changing_rows", [("candidate", 1), ("user", "globals")])
def test_inputs_change_only_the_states_that_may_see_them(merge, rule, field, changing_rows):
    """The candidate changes only its own (last) row; user features change only the global rows (the
    candidate sees the user token). Every sequence-side state stays bit-identical, under every query rule."""
    model = make_model(merge, query_selection=rule)
    x = make_inputs(RAGGED)
    other = dataclasses.replace(x, **{field: torch.randn_like(getattr(x, field))})
    a, b = model.encode(x), model.encode(other)
    n = model.num_globals if changing_rows == "globals" else changing_rows
    torch.testing.assert_close(a.merged, b.merged, rtol=0, atol=0)
    for layer_a, layer_b in zip(a.layers, b.layers):
        torch.testing.assert_close(layer_a[:, :-n], layer_b[:, :-n], rtol=0, atol=0)
        assert (layer_a[:, -1] - layer_b[:, -1]).abs().amax() > 1e-3  # the candidate row does change
    assert not torch.allclose(model(x), model(other))


@torch.no_grad()
@pytest.mark.parametrize("rule", QUERY_RULES)
def test_padded_positions_change_nothing(merge, rule):
    """Garbage written into every padded merged position leaves all valid states and the logits as they were."""
    model = make_model(merge, query_selection=rule)
    x = make_inputs(RAGGED)
    clean = model.encode(x)

    def poison(module, inputs, merged):
        pad = torch.arange(merged.shape[1])[None, :] < clean.num_pad[:, None]
        return torch.where(pad[..., None], torch.randn_like(merged) * 100, merged)

    handle = model.merge.register_forward_hook(poison)
    try:
        dirty = model.encode(x)
        dirty_logits = model.head_logits(x, dirty)
    finally:
        handle.remove()
    valid = torch.arange(clean.merged.shape[1])[None, :] >= clean.num_pad[:, None]
    assert (clean.merged[~valid] == 0).all()
    torch.testing.assert_close(dirty.merged[valid], clean.merged[valid])
    m = model.num_globals
    for layer_clean, layer_dirty in zip(clean.layers, dirty.layers):
        k_eff = layer_clean.shape[1] - m
        q_valid = torch.arange(k_eff)[None, :] >= model.attention.query_padding(clean.num_pad, valid.shape[1])[:, None]
        torch.testing.assert_close(layer_dirty[:, :k_eff][q_valid], layer_clean[:, :k_eff][q_valid])
        torch.testing.assert_close(layer_dirty[:, k_eff:], layer_clean[:, k_eff:])
    torch.testing.assert_close(dirty_logits, model.head_logits(x, clean))


@torch.no_grad()
def test_padding_inside_a_group_stays_zero_in_token_merge(merge):
    """Zero-padded tokens (what to_left_padded writes): concat keeps the padded slots of a merged token 0 and
    the valid ones unchanged; InnerTrans gives its padded slots 0 too and ignores whatever the padding held."""
    k, d = 4, 8
    op = TokenMerge(merge, k, d, None, heads=2, ffn_mult=2, norm="layernorm", attention_impl="auto").eval()
    valid = torch.arange(12)[None, :] >= torch.tensor([0, 5, 11])[:, None]  # 12, 7 and 1 valid events
    tokens = torch.randn(3, 12, d) * valid[..., None]
    out = op(tokens, valid).view(3, 12, d)
    assert (out[~valid] == 0).all()
    if merge == "concat":
        torch.testing.assert_close(out, tokens)
    else:
        garbage = torch.where(valid[..., None], tokens, torch.randn_like(tokens) * 50)
        torch.testing.assert_close(op(garbage, valid).view(3, 12, d), out)


def test_inner_trans_runs_only_on_groups_holding_an_event():
    """A ragged batch is padded to its longest history; InnerTrans skips the all-padding groups, giving the
    outputs and gradients (inputs and every parameter) of running it on every group."""
    k, d = 4, 8
    op = TokenMerge("inner_trans", k, d, None, heads=2, ffn_mult=2, norm="layernorm", attention_impl="auto")
    tokens = torch.randn(4, 24, d, generator=torch.Generator().manual_seed(3))
    valid = torch.arange(24)[None, :] >= torch.tensor([0, 13, 24, 21])[:, None]  # 24, 11, 0 and 3 events
    groups_seen = []
    op.inner.register_forward_hook(lambda module, args, out: groups_seen.append(args[0].shape[0]))
    results = []
    for live_groups in (6 + 3 + 0 + 1, None):
        x = tokens.clone().requires_grad_()
        out = op(x, valid, live_groups)
        grads = torch.autograd.grad((out * out).sum(), [x, *op.parameters()])
        results.append((out, *grads))
    assert groups_seen == [6 + 3 + 0 + 1, 4 * 6]  # ceil(length / K) per row, then every group
    for skipped, full in zip(*results):
        torch.testing.assert_close(skipped, full)


@torch.no_grad()
def test_the_model_runs_inner_trans_on_live_groups_only():
    model = make_model("inner_trans")  # K = 4
    groups_seen = []
    model.merge.inner.register_forward_hook(lambda module, args, out: groups_seen.append(args[0].shape[0]))
    model(make_inputs([5, 64, 0, 17]))
    assert groups_seen == [2 + 16 + 0 + 5]  # of 4 x 16 in the padded batch


@pytest.mark.parametrize("rule", QUERY_RULES)
@pytest.mark.parametrize("match", ["none", "attention_readout"])
def test_the_layers_project_only_valid_tokens(merge, rule, match):
    """With the rows' lengths known on the host (the loader's, or one sync), the attention layers project and
    transform only the tokens that are not padding: the cross layer's keys/values only for merged tokens that
    hold an event (and the globals), queries and FFNs only for valid query slots. The logits and every
    parameter's gradient equal those of computing every padded position (a pad_to without host lengths, as under
    torch.export), whether the lengths come from the host (`host_lengths`) or are counted by a host sync."""
    model = make_model(merge, query_selection=rule, candidate_match=match, length_chunks=1).train()
    lengths = RAGGED
    rows = {"kv": [], "ffn": []}
    for name, module in (("kv", model.attention.cross.kv), ("ffn", model.attention.cross.ffn)):
        module.register_forward_hook(lambda mod, args, out, name=name: rows[name].append(args[0].shape[:-1].numel()))
    results = []
    for extra in ({"host_lengths": torch.tensor(lengths)}, {}, {"pad_to": max(lengths)}):
        x = dataclasses.replace(make_inputs(lengths), **extra)
        logits = model(x)
        grads = torch.autograd.grad(logits.square().sum(), list(model.parameters()))
        results.append((logits, *grads))
    for skipped, full in zip(results[0], results[2]):
        torch.testing.assert_close(skipped, full)
    for counted, full in zip(results[1], results[2]):  # lengths counted by a host sync: the same
        torch.testing.assert_close(counted, full)
    k, b, m = model.cfg.merge_k, len(lengths), model.num_globals - 1  # m user-side globals; the candidate apart
    groups = [-(-n // k) for n in lengths]
    queries = model.attention.effective_queries(max(groups))
    valid_q = [(queries if g else 0) if rule == "learnable" else min(queries, g) for g in groups]
    padded_keys, padded_queries = b * (max(groups) + m), b * (queries + m)
    if match == "none":  # per forward one call: the user side's tokens and the b candidates (last in each row)
        assert rows["kv"] == [sum(groups) + b * m + b] * 2 + [padded_keys + b]
        assert rows["ffn"] == [sum(valid_q) + b * m + b] * 2 + [padded_queries + b]
    else:  # the candidate's row apart, with its score bias: the user side's tokens, then the b candidates' rows
        assert rows["kv"] == [sum(groups) + b * m, b] * 2 + [padded_keys, b]
        assert rows["ffn"] == [sum(valid_q) + b * m, b] * 2 + [padded_queries, b]
    assert sum(groups) + b * m < padded_keys and sum(valid_q) < b * queries  # the batch has padding to skip


@pytest.mark.parametrize("rule", QUERY_RULES)
@pytest.mark.parametrize("match", ["none", "attention_readout"])
def test_length_chunks_give_the_whole_batch_s_logits_and_gradients(merge, rule, match, monkeypatch):
    """Under `model.length_chunks` the layers run on runs of rows of similar length (sorted, then put back), each
    trimmed to its longest row: the logits, the events' gradient, every parameter's gradient and every layer's
    states equal those of one pass over the whole batch."""
    from longer_train.models import hybrid_attention as module

    lengths = [64, 0, 30, 1, 5, 13, 7, 2, 9, 48, 3, 20]  # unsorted: the chunks take rows from all over the batch
    x = dataclasses.replace(make_inputs(lengths), host_lengths=torch.tensor(lengths))
    plans, plan = [], module.length_chunks
    monkeypatch.setattr(module, "length_chunks", lambda *args: (plans.append(plan(*args)), plans[-1])[1])
    results = []
    for chunks in (1, 4):
        model = make_model(merge, query_selection=rule, candidate_match=match, length_chunks=chunks).train()
        events = x.events.clone().requires_grad_(True)
        logits = model(dataclasses.replace(x, events=events))
        weights = torch.linspace(-1.0, 2.0, logits.shape[0])
        grads = torch.autograd.grad((logits * weights).sum(), [events, *model.parameters()])
        with torch.no_grad():
            layers = model.encode(x).layers
        results.append((logits, *grads, *layers))
    assert len(plans) == 2 and plans[0] == plans[1]  # only the chunked model plans (forward, then encode)
    assert plans[0] is not None and 2 <= len(plans[0]) <= 4 and any(trim > 0 for _, _, trim in plans[0])
    for chunked, whole in zip(results[1], results[0]):
        torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)


def _attention_work(groups, chunks, seq_len, min_len, globals_):
    """rows x keys over the chunks (None: one pass), as `length_chunks` counts it."""
    spans = [(0, len(groups), 0)] if chunks is None else chunks
    return sum((r1 - r0) * (seq_len - trim + globals_) for r0, r1, trim in spans)


@pytest.mark.parametrize("seed", range(20))
def test_length_chunks_cover_the_rows_and_trim_only_padding(seed):
    """The plan cuts the sorted rows into at most max_chunks consecutive runs covering every row; each run is
    trimmed to its longest row (never below min_len positions), and a plan is made only when it does less
    attention work than one pass by more than a chunk's fixed cost."""
    from longer_train.models.hybrid_attention import CHUNK_MIN_SAVING, length_chunks

    g = torch.Generator().manual_seed(seed)
    b, seq_len, min_len, globals_ = int(torch.randint(2, 70, (1,), generator=g)), 200, 20, 3
    tail = torch.distributions.Pareto(torch.tensor(1.0), torch.tensor(1.2)).sample((b,)) * 8  # long-tailed
    groups = sorted(min(seq_len, int(v)) for v in tail)
    groups[-1] = seq_len  # the batch is padded to its longest row
    for max_chunks in (2, 4, 8):
        chunks = length_chunks(groups, seq_len, min_len, globals_, max_chunks)
        assert chunks is not None  # one row padded to 200 among long-tailed ones: always worth cutting
        assert 2 <= len(chunks) <= max_chunks
        assert chunks[0][0] == 0 and chunks[-1][1] == b and all(a[1] == c[0] for a, c in zip(chunks, chunks[1:]))
        for r0, r1, trim in chunks:
            assert r0 < r1 and trim == seq_len - max(groups[r1 - 1], min_len)
        saved = _attention_work(groups, None, seq_len, min_len, globals_)
        saved -= _attention_work(groups, chunks, seq_len, min_len, globals_)
        assert saved > (len(chunks) - 1) * CHUNK_MIN_SAVING * b * (seq_len + globals_)


def test_length_chunks_split_a_long_tail_and_leave_even_batches_whole():
    from longer_train.models.hybrid_attention import length_chunks

    tail = [10] * 28 + [1000] * 4  # 28 short rows padded to 4 long ones: two chunks save most of the work
    assert length_chunks(tail, 1000, 100, 2, 4) == [(0, 28, 900), (28, 32, 0)]
    assert length_chunks([1000] * 32, 1000, 100, 2, 4) is None  # nothing to trim
    assert length_chunks([990] * 31 + [1000], 1000, 100, 2, 4) is None  # too little to pay a chunk's cost
    assert length_chunks(tail, 1000, 100, 2, 1) is None and length_chunks([10], 1000, 100, 2, 4) is None


@torch.no_grad()
@pytest.mark.parametrize("rule", QUERY_RULES)
def test_each_row_queries_its_own_valid_merged_tokens(merge, rule):
    """In a ragged batch each row's query states equal those of the row run alone (no padding at all),
    which holds only if a row's queries are chosen among its own *valid* merged tokens (for `recent`: its
    min(k, L_i') most recent ones)."""
    model = make_model(merge, query_selection=rule)
    x = make_inputs(RAGGED)
    batched = model.encode(x)
    logits = model(x)
    m, k = model.num_globals, model.cfg.num_queries
    starts = torch.cumsum(x.lengths, 0) - x.lengths
    for i, length in enumerate(RAGGED):
        s = int(starts[i])
        alone = dataclasses.replace(
            x, events=x.events[s : s + length], lengths=x.lengths[i : i + 1],
            time_diff=x.time_diff[s : s + length], candidate=x.candidate[i : i + 1], user=x.user[i : i + 1],
            dense=x.dense[i : i + 1],
        )
        single = model.encode(alone)
        n_valid = -(-length // model.cfg.merge_k)
        n_q = (k if n_valid else 0) if rule == "learnable" else min(k, n_valid)  # valid query states
        assert single.layers[0].shape[1] == (k if rule == "learnable" else n_q) + m
        for layer_b, layer_s in zip(batched.layers, single.layers):
            torch.testing.assert_close(layer_b[i, -(n_q + m) :], layer_s[0, -(n_q + m) :], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[i : i + 1], model(alone), atol=1e-5, rtol=1e-5)


# merged length 16, k = 4; rows with 0, 1, 3, 4, 5, 10 and 16 valid merged tokens (num_pad = 16 - valid)
VALID = [0, 1, 3, 4, 5, 10, 16]
SHORT = [[12, 13, 14, 15]] * 4  # rows with at most k valid tokens use all of them (padded slots first)
EXPECTED_POSITIONS = {  # written out by hand from the rules' definitions (docs/model.md)
    "recent": SHORT + [[12, 13, 14, 15]] * 3,
    # the newest token of each of 4 equal strides: 5 tokens 11..15, 10 tokens 6..15, 16 tokens 0..15
    "uniform": SHORT + [[11, 12, 13, 15], [7, 10, 12, 15], [3, 7, 11, 15]],
    # the 2 newest, then the newest of each of 2 equal strides of the older tokens (11..13, 6..13, 0..13)
    "recent_uniform": SHORT + [[11, 13, 14, 15], [9, 13, 14, 15], [6, 13, 14, 15]],
}


@pytest.mark.parametrize("rule", sorted(EXPECTED_POSITIONS))
def test_query_positions_are_exactly_the_rule_s(rule):
    num_pad = 16 - torch.tensor(VALID)
    assert query_positions(rule, num_pad, 16, 4).tolist() == EXPECTED_POSITIONS[rule]


@pytest.mark.parametrize("rule", ["uniform", "recent_uniform"])
def test_spread_queries_are_even_and_include_the_newest(rule):
    """On many ragged rows: ascending valid positions, the newest included; uniform strides differ by at most
    one token; recent_uniform's last ceil(k/2) are the newest and the rest are spread the same way."""
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 5, 8):
        seq_len = 40
        num_pad = torch.randint(0, seq_len + 1, (64,), generator=g)
        positions = query_positions(rule, num_pad, seq_len, k)
        for row, pad in zip(positions.tolist(), num_pad.tolist()):
            valid = seq_len - pad
            if valid <= k:
                assert row == list(range(seq_len - k, seq_len))
                continue
            assert row[-1] == seq_len - 1 and row[0] >= pad and all(a < b for a, b in zip(row, row[1:]))
            newest = -(-k // 2) if rule == "recent_uniform" else 0
            if newest:
                assert row[k - newest :] == list(range(seq_len - newest, seq_len))
            spread = row[: k - newest]
            if spread:
                edges = [pad - 1, *spread]  # each query closes a stride of (valid - newest) / (k - newest)
                strides = [b - a for a, b in zip(edges, edges[1:])]
                assert max(strides) - min(strides) <= 1 and sum(strides) == valid - newest


@torch.no_grad()
@pytest.mark.parametrize("match", ["none", "attention_readout"])
@pytest.mark.parametrize("rule", QUERY_RULES)
def test_the_model_queries_the_tokens_at_the_rule_s_positions(merge, rule, match, monkeypatch):
    """The cross-causal layer's sequence queries are the merged tokens at the rule's positions (or the learned
    vectors), and its attention gets each query's key position: that of its token, the globals after the
    sequence, the candidate last (in the same call without the candidate match; with it, its row apart)."""
    from longer_train.models import hybrid_attention as module

    model = make_model(merge, query_selection=rule, num_queries=4, candidate_match=match, length_chunks=1)
    attention_calls, selected = [], []
    real_attention, real_select = module.hybrid_attention, model.attention.select_queries
    monkeypatch.setattr(module, "hybrid_attention", lambda q, k, v, pad, impl="auto", q_pos=None: (
        attention_calls.append(q_pos), real_attention(q, k, v, pad, impl=impl, q_pos=q_pos))[1])
    model.attention.select_queries = lambda seq, pad: (selected.append(real_select(seq, pad)), selected[-1])[1]
    states = model.encode(make_inputs(RAGGED))
    queries, positions, _ = selected[0]
    cross_positions = attention_calls[0]  # the first call is the cross-causal layer's
    seq_len, width = states.merged.shape[1:]
    # rows after the sequence queries in that call: the user-side globals, and without the match the candidate
    globals_ = model.num_globals - (1 if match != "none" else 0)
    if rule == "recent":
        assert positions is None and cross_positions is None  # bottom-right aligned: the Triton kernel's layout
        torch.testing.assert_close(queries, states.merged[:, -4:], rtol=0, atol=0)
        return
    assert cross_positions[:, 4:].tolist() == [list(range(seq_len, seq_len + globals_))] * len(RAGGED)
    assert torch.equal(cross_positions[:, :4], positions)
    if rule == "learnable":
        assert (positions == seq_len - 1).all()
        torch.testing.assert_close(queries, model.attention.learned_queries.expand(len(RAGGED), -1, -1))
        return
    expected = query_positions(rule, states.num_pad, seq_len, 4)
    assert torch.equal(positions, expected)
    torch.testing.assert_close(queries, states.merged.gather(1, expected[..., None].expand(-1, -1, width)))


def test_behaviour_tokens_are_the_mlp_of_events_and_time_plus_position():
    """TokenBuilder folds the time embedding, the biases and the position embedding into its matmuls; it is
    still MLP([events | time embedding]) + position embedding (values and the gradients of every input and
    parameter), recencies beyond the table sharing its last row."""
    torch.manual_seed(0)
    builder = TokenBuilder(event_dim=12, token_dim=8, time_buckets=16, max_positions=20)
    events = torch.randn(50, 12, requires_grad=True)
    time_diff = torch.rand(50) * 1e6
    recency = torch.randint(0, 30, (50,))
    grad = torch.randn(50, 8)

    def plain():
        time = builder.time_embedding(time_diff_bucket(time_diff, 16))
        return builder.mlp(torch.cat([events, time], -1)) + builder.position_embedding(recency.clamp(max=19))

    results = []
    for fn in (lambda: builder(events, time_diff, recency), plain):
        out = fn()
        inputs = [events, *builder.parameters()]
        results.append((out, torch.autograd.grad(out, inputs, grad)))
    (ours, our_grads), (theirs, their_grads) = results
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b)


def test_merge_groups_align_to_the_newest_event():
    k = 4
    lengths = torch.tensor([13, 4, 0])
    values = torch.arange(1, 18, dtype=torch.float32)[:, None]  # events 1..13 | 14..17
    padded, valid = to_left_padded(values, lengths, total=16)
    merged = TokenMerge("concat", k, 1, None, 1, 1, "layernorm", "auto")(padded, valid)  # [3, 4, 4]
    assert merged[0].tolist() == [[0, 0, 0, 1], [2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13]]
    assert merged[1].tolist() == [[0] * 4, [0] * 4, [0] * 4, [14, 15, 16, 17]]
    assert (merged[2] == 0).all()
    assert valid.sum(1).tolist() == [13, 4, 0]


def test_empty_histories_train():
    model = make_model("inner_trans").train()
    x = make_inputs([0, 0, 0])
    logits = model(x)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("proj", [None, 24])
def test_gradients_are_finite_on_ragged_batches(merge, proj):
    model = make_model(merge, merge_proj_dim=proj).train()
    x = make_inputs(RAGGED)
    x.events.requires_grad_(True)
    model(x).sum().backward()
    assert torch.isfinite(x.events.grad).all() and x.events.grad.abs().sum() > 0



@pytest.mark.parametrize("merge", ["concat", "inner_trans"])
def test_full_rows_skip_the_padding_pass_with_the_same_outputs_and_gradients(merge, monkeypatch):
    """Rows that all hold a multiple of K events are the padded batch already: the model views them instead of
    scattering them into a zero-filled copy; the result (logits and every gradient) is that of the padding pass,
    which torch.export (shapes independent of the data) forces."""
    import longer_train.models.longer as longer_module

    calls = []
    monkeypatch.setattr(longer_module, "to_left_padded",
                        lambda *a: calls.append(1) or to_left_padded(*a))
    model = make_model(merge).train()
    results = []
    for exporting in (False, True):
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda exporting=exporting: exporting)
        x = dataclasses.replace(make_inputs([64, 64, 64]), pad_to=64)
        x.events.requires_grad_()
        model.zero_grad()
        logits = model(x)
        logits.sum().backward()
        results.append((logits.detach(), x.events.grad, [p.grad.clone() for p in model.parameters()]))
        assert len(calls) == int(exporting)  # the tokens (match units go straight into groups)
    (fast, fast_events, fast_params), (padded, padded_events, padded_params) = results
    torch.testing.assert_close(fast, padded)
    torch.testing.assert_close(fast_events, padded_events)
    for a, b in zip(fast_params, padded_params):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("lengths", [RAGGED, [64, 64, 64]])
@pytest.mark.parametrize("settings", [dict(merge="concat"), dict(merge="inner_trans"), TRANSFORMER],
                         ids=["concat", "inner_trans", "transformer"])
def test_sdpa_attention_gives_the_reference_s_logits_and_gradients(settings, lengths):
    """Ragged rows (in length chunks: padded rows, the masked and the rotated paths) and full rows (no padding:
    SDPA's causal modes), LONGER and the Transformer baseline (every position a query)."""
    x = make_inputs(lengths)
    results = []
    for impl in ("reference", "sdpa"):
        model = make_model(**settings, attention_impl=impl).train()
        logits = model(x)
        logits.sum().backward()
        results.append((logits.detach(), [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
