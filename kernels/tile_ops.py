"""Small Triton helpers shared by the kernels in this folder."""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # softmax runs in base 2 (exp2 is one instruction); logits are scaled by this


@triton.jit
def dot(a, b, WIDEN: tl.constexpr):
    """tl.dot, with both tiles widened to fp32 first when WIDEN. The kernels set WIDEN on CPU only: the
    Triton interpreter (3.9) multiplies bf16 tiles as their raw uint16 bits, since its dot has no bf16 case."""
    if WIDEN:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b)
