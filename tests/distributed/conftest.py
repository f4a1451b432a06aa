"""Fixtures of the distributed tests."""

from pathlib import Path

import pytest

from longer_train.datasets import synthetic


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """~3,600 training rows of short histories: enough for a few steps on 2 ranks."""
    root = tmp_path_factory.mktemp("dist-data")
    synthetic.generate(root, users=300, max_len=64, seed=1)
    return root
