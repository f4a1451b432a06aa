"""Small Triton helpers shared by the kernels in this folder: the dot product and the kernel launcher."""

from __future__ import annotations

import contextlib
import os

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # softmax runs in base 2 (exp2 is one instruction); logits are scaled by this


@triton.jit
def dot(a, b, WIDEN: tl.constexpr):
    """tl.dot with fp32 accumulation; on the GPU, bf16 tiles and fp32 tiles (as TF32, Triton's default) run
    on the tensor cores. WIDEN (set on CPU only) widens both tiles to fp32 first: the Triton interpreter (3.9)
    multiplies bf16 tiles as their raw uint16 bits, since its dot has no bf16 case."""
    if WIDEN:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b)


def autotune_enabled() -> bool:
    """LONGER_KERNELS_AUTOTUNE=0 launches each kernel with its first (default) config instead of tuning:
    correctness tests on a fresh GPU machine then compile one config per shape class, not all of them."""
    return os.environ.get("LONGER_KERNELS_AUTOTUNE", "1") != "0"


# Triton's interpreter before the fix for triton-lang/triton#9171 (3.6 has the bug, 3.9 not) turns a scalar
# into a Python int with int(<1-element array>), which numpy >= 2.4 refuses; the kernels' loop bounds hit it.
_OLD_INTERPRETER_ERROR = "only 0-dimensional arrays can be converted to Python scalars"
_OLD_INTERPRETER_HINT = (
    "the Triton {} interpreter (TRITON_INTERPRET=1) cannot run these kernels with numpy >= 2.4 "
    "(triton-lang/triton#9171): install numpy<2.4, or the triton this project pins (make setup)"
)


@contextlib.contextmanager
def explain_interpreter_errors():
    """Re-raises the old interpreter's numpy TypeError (which the interpreter may wrap in its own
    InterpreterError) as an error that says what to install; any other error passes through."""
    try:
        yield
    except Exception as err:
        if _OLD_INTERPRETER_ERROR in str(err):
            raise RuntimeError(_OLD_INTERPRETER_HINT.format(triton.__version__)) from err
        raise


class Launcher:
    """How one kernel is launched: autotuned over `configs` (aimed at sm_90) on CUDA, tuned per `key`; under
    the interpreter (CPU tensors, tests) with the small fixed `cpu_blocks` and widened dots."""

    def __init__(self, kernel, configs: list[triton.Config], key: list[str], cpu_blocks: dict) -> None:
        self.kernel, self.configs, self.cpu_blocks = kernel, configs, cpu_blocks
        self.tuned = triton.autotune(configs, key=key)(kernel)

    def __call__(self, grid, *args, **constexprs) -> None:
        if not args[0].is_cuda:
            with explain_interpreter_errors():
                self.kernel[grid](*args, **constexprs, **self.cpu_blocks, WIDEN_DOT=True)
        elif autotune_enabled():
            self.tuned[grid](*args, **constexprs, WIDEN_DOT=False)
        else:
            default = self.configs[0]
            self.kernel[grid](
                *args, **constexprs, **default.kwargs, num_warps=default.num_warps, num_stages=default.num_stages,
                WIDEN_DOT=False,
            )
