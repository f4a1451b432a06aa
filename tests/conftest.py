import os

import pytest
import torch

# Without a GPU the Triton kernels run under the Triton interpreter; triton.jit reads this variable when a
# kernel module is imported (the dispatcher imports them only on first use), so it must be set here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=["concat", "inner_trans"])
def merge(request) -> str:
    """Both token-merge modes."""
    return request.param


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A small synthetic dataset (300 users, histories of up to 64 events) for in-process runs of the CLIs."""
    from longer_train.datasets import synthetic

    root = tmp_path_factory.mktemp("tiny-cli")
    synthetic.generate(root, users=300, max_len=64, seed=1)
    return root
