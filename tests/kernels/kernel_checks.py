"""Shape sets, device and tolerances shared by the kernel tests.

The Triton kernels run on CUDA when there is a GPU, else on CPU under the Triton interpreter
(TRITON_INTERPRET=1 is set in tests/conftest.py, before any kernel module is imported).

Shape sets: small ones by default (CPU, `make test`, well under a minute); `KERNELS_TEST_SIZE=gpu` (what
`make gpu-check` sets) adds the large ones, which are skipped without a GPU."""

import os

import pytest
import torch

GPU_SIZES = os.environ.get("KERNELS_TEST_SIZE") == "gpu"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# dtype -> (atol, rtol) against the fp32 reference on the same (rounded) inputs. On the GPU, fp32 tiles are
# multiplied as TF32 (10-bit mantissa), like torch with allow_tf32.
TOLERANCE = {
    torch.float32: (5e-3, 5e-3) if DEVICE == "cuda" else (2e-5, 1e-4),
    torch.bfloat16: (3e-2, 3e-2),
}


def sizes(small: list, large: list) -> list:
    """The shape set to parametrise a test with: `large` ones only for KERNELS_TEST_SIZE=gpu on a GPU."""
    if not GPU_SIZES:
        return small
    marks = pytest.mark.skipif(DEVICE != "cuda", reason="large kernel shapes need a GPU")
    return small + [pytest.param(*case, marks=marks) for case in large]


def assert_close_to_reference(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    atol, rtol = TOLERANCE[actual.dtype]
    # low-precision errors grow with the size of the values compared
    scale = max(1.0, float(expected.detach().abs().amax())) if atol > 1e-3 else 1.0
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )
