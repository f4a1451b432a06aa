"""Every model of the registry (models/ranking.py: DENSE_MODELS) meets the one contract the trainer, distributed/
and serve/ rely on (models/contract.py: DenseModel), and the registry's FLOPs comparison is LONGER's alone."""

import pytest
from longer_inputs import DIMS, TABLE1, make_table1_model

from longer_train.models.contract import DenseModel
from longer_train.models.ranking import DENSE_MODELS


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_every_table1_model_is_a_dense_model(name):
    model = make_table1_model(name)
    assert isinstance(model, DenseModel) and model.dims == DIMS
    assert model.flops([5, 9]) > 0 and model.compute_units().head


def test_the_registry_builds_only_dense_models():
    assert {type(make_table1_model(name)) for name in TABLE1} <= set(DENSE_MODELS.values())


def test_something_without_the_contract_is_not_one():
    class Partial:
        dims = DIMS

        def forward(self, x):
            return x

    assert not isinstance(Partial(), DenseModel)


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_every_model_reads_one_sizing_contract(name):
    """`DenseInputs.pad_to` + `host_lengths` (models/inputs.py: `padding()`), as training, compile, export and
    serving pass them: any pad_to at or above the longest history, with or without the host lengths, gives
    every model the logits and prefill/score of the plain call (lengths counted by one host sync)."""
    import dataclasses

    import torch
    from longer_inputs import make_inputs

    lengths = [9, 0, 23, 4]
    model = make_table1_model(name).eval()
    x = make_inputs(lengths)
    with torch.no_grad():
        plain = model(x)
        for pad_to in (None, max(lengths), max(lengths) + 13):
            for host in (None, torch.tensor(lengths)):
                sized = dataclasses.replace(x, pad_to=pad_to, host_lengths=host)
                torch.testing.assert_close(model(sized), plain, atol=1e-5, rtol=0, msg=f"{pad_to=} {host=}")
                candidates = x.candidate.unsqueeze(1)
                scored = model.score(model.prefill(sized), candidates)[:, 0]
                torch.testing.assert_close(scored, plain, atol=1e-5, rtol=0, msg=f"score {pad_to=} {host=}")
