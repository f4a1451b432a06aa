import pytest


@pytest.fixture(params=["concat", "inner_trans"])
def merge(request) -> str:
    """Both token-merge modes."""
    return request.param
