"""The analytic FLOPs function agrees with torch's FlopCounterMode."""

import pytest
import torch
from longer_inputs import DIMS, make_inputs, make_model
from torch.utils.flop_counter import FlopCounterMode

from longer_train.config import QUERY_RULES
from longer_train.models.flops import longer_flops


@pytest.mark.parametrize("match", ["none", "attention", "attention_readout"])
@pytest.mark.parametrize("proj", [None, 48])
@pytest.mark.parametrize("lengths", [[64], [5, 64, 0, 17], [33, 33]])
def test_flops_match_flop_counter(merge, proj, lengths, match):
    model = make_model(merge, merge_proj_dim=proj, candidate_match=match)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(make_inputs(lengths))
    measured = counter.get_total_flops()
    predicted = longer_flops(model.cfg, DIMS, lengths)
    assert measured > 0
    assert abs(predicted - measured) / measured < 0.05


@pytest.mark.parametrize("rule", QUERY_RULES)
@pytest.mark.parametrize("k", [3, 40])  # below and above the merged length of the longest row (16)
def test_flops_match_flop_counter_for_every_query_rule(merge, rule, k):
    lengths = [5, 64, 0, 17]
    model = make_model(merge, query_selection=rule, num_queries=k)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(make_inputs(lengths))
    measured = counter.get_total_flops()
    assert abs(longer_flops(model.cfg, DIMS, lengths) - measured) / measured < 0.05


def test_merge_cuts_flops_like_the_paper():
    """Concat merge (K=4) costs less than no merge (K=1) at L=2048, d=32, as in the paper's example."""
    from longer_train.config import ModelConfig
    from longer_train.models.inputs import DenseDims

    dims = DenseDims(event=64, candidate=64, user=0, dense=0, max_len=2048)
    base = dict(token_dim=32, num_queries=10_000, num_self_layers=0, head_dim=32)
    no_merge = longer_flops(ModelConfig(merge_k=1, **base), dims, [2048])
    merged = longer_flops(ModelConfig(merge_k=4, **base), dims, [2048])
    assert merged < 0.75 * no_merge
