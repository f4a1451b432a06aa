"""Small LONGER models and jagged inputs shared by the model tests."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from longer_train.config import ModelConfig
from longer_train.models.candidate_match import MatchPair
from longer_train.models.inputs import DenseDims, DenseInputs
from longer_train.models.longer import Longer

# events: item (4) | category (4) | action (4); candidate: item (4) | category (4), sharing their tables
DIMS = DenseDims(event=12, candidate=8, user=6, dense=2, max_len=64,
                  match_pairs=(MatchPair(0, 0, 4), MatchPair(4, 4, 4)))

# the Transformer baseline's settings on make_model's (configs/experiments/transformer.yaml): no merge, every
# position a query, one head of width d
TRANSFORMER = dict(merge="concat", merge_k=1, num_queries=10_000, head_dim=8)


def make_model(merge: str = "concat", **overrides) -> Longer:
    torch.manual_seed(0)
    settings = dict(
        token_dim=8, merge=merge, merge_k=4, num_queries=3, num_self_layers=2, head_dim=16, num_cls=2,
        head_hidden=[16], inner_trans_heads=2,
    )
    cfg = ModelConfig(**{**settings, **overrides})
    return Longer(cfg, DIMS).eval()


def make_inputs(lengths: list[int], seed: int = 1) -> DenseInputs:
    g = torch.Generator().manual_seed(seed)
    n, b = sum(lengths), len(lengths)
    return DenseInputs(
        events=torch.randn(n, DIMS.event, generator=g),
        lengths=torch.tensor(lengths),
        time_diff=torch.randint(0, 10**7, (n,), generator=g),
        candidate=torch.randn(b, DIMS.candidate, generator=g),
        user=torch.randn(b, DIMS.user, generator=g),
        dense=torch.randn(b, DIMS.dense, generator=g),
    )


def flops_error(model, lengths: list[int]) -> float:
    """Relative error of a model's analytic `flops(lengths)` against FlopCounterMode on one forward pass."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(make_inputs(lengths))
    measured = counter.get_total_flops()
    return abs(model.flops(lengths) - measured) / measured


# every model of the paper's Table 1 as a small model over DIMS: (dense class name, config overrides); DIN
# (Recent50) is DIN over histories cut to 50 events (data.max_len=50), the same model
TABLE1 = {
    "longer": ("longer", {}),
    "longer_inner_trans": ("longer", dict(merge="inner_trans")),
    "transformer": ("longer", TRANSFORMER),
    "hstu": ("hstu", dict(head_dim=4, hstu_layers=2)),
    "din": ("din", dict(din_hidden=[12, 6])),
    "twin": ("twin", dict(head_dim=4, twin_top_k=10)),
    "sum_pooling": ("sum_pooling", {}),
    "no_sequence": ("no_sequence", {}),
}


def make_table1_model(name: str, **overrides):
    """A Table 1 model (TABLE1) with its parameters moved off their initial values (zero-initialised biases
    would hide what padding could leak)."""
    from longer_train.models.ranking import DENSE_MODELS

    model_name, settings = TABLE1[name]
    if model_name == "longer":
        return make_model(**{**settings, **overrides})
    torch.manual_seed(0)
    cfg = ModelConfig(**{"token_dim": 8, "head_hidden": [16], **settings, **overrides})
    model = DENSE_MODELS[model_name](cfg, DIMS).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model
