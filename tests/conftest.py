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
