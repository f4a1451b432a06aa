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
