"""Compile every Triton kernel, at every autotune config, for a GPU architecture without a GPU: catches type
and layout errors the interpreter lets through and shows each config's shared memory against the limit.
Says nothing about speed. Uses whichever Triton is importable (run it once per Triton version the kernels
must support: this machine's, and the GPU machine's via PYTHONPATH).

    python benchmarks/compile_kernels.py [--arch 90] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, not for the interpreter

import triton  # noqa: E402
from longer_train.kernels import group_attention_triton as group  # noqa: E402
from longer_train.kernels import hybrid_attention_triton as hybrid  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def _signature(fn, pointers: dict[str, str], constexprs: dict) -> dict[str, str]:
    scalar = lambda name: "fp32" if name in ("qk_scale", "sm_scale") else "i32"
    return {n: "constexpr" if n in constexprs else pointers.get(n) or scalar(n) for n in fn.arg_names}


def _cases(dtype: str):
    """(kernel, pointer types, constexprs, launch options) of every kernel and config at head dims 16/32/64
    and group sizes 4/8/16."""
    p = "*" + dtype
    hybrid_kernels = [
        (hybrid._fwd, {"Q": p, "K": p, "V": p, "NumPad": "*i32", "Out": p, "Lse": "*fp32"}),
        (hybrid._bwd_dkdv, {"Q": p, "K": p, "V": p, "DO": p, "Lse": "*fp32", "Delta": "*fp32", "NumPad": "*i32",
                            "DK": p, "DV": p}),
        (hybrid._bwd_dq, {"Q": p, "K": p, "V": p, "DO": p, "Out": p, "Lse": "*fp32", "Delta": "*fp32",
                          "NumPad": "*i32", "DQ": p}),
    ]
    for dh in (16, 32, 64):
        for launcher, pointers in hybrid_kernels:
            for config in launcher.configs:
                constexprs = {"HEAD_DIM": dh, "BLOCK_D": dh, "WIDEN_DOT": False, **config.kwargs}
                yield launcher.kernel, pointers, constexprs, config
    group_kernels = [
        (group._fwd, {"Q": p, "K": p, "V": p, "Valid": "*i8", "Out": p}),
        (group._bwd, {"Q": p, "K": p, "V": p, "Valid": "*i8", "DO": p, "DQ": p, "DK": p, "DV": p}),
    ]
    for k in (4, 8, 16):
        for config in group._CONFIGS:
            for launcher, pointers in group_kernels:
                yield launcher.kernel, pointers, {"GROUP_SIZE": k, "HEAD_DIM": 32, "BLOCK_D": 32, "WIDEN_DOT": False,
                                                  **config.kwargs}, config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for Hopper")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    lines = [f"# Triton kernels compiled for sm_{args.arch} (no GPU)", "",
             "command: `python benchmarks/compile_kernels.py " + shlex.join(sys.argv[1:] if argv is None else argv)
             + f"`; triton {triton.__version__}", "",
             "| kernel | dtype | constexprs | warps / stages | shared memory KB | compile s |",
             "|---|---|---|---|---:|---:|"]
    worst = 0
    for dtype in ("fp32", "bf16"):
        for fn, pointers, constexprs, config in _cases(dtype):
            source = ASTSource(fn=fn, signature=_signature(fn, pointers, constexprs),
                               constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
            start = time.perf_counter()
            compiled = triton.compile(source, target=target,
                                      options={"num_warps": config.num_warps, "num_stages": config.num_stages})
            shown = {k: v for k, v in constexprs.items() if k not in ("BLOCK_D", "WIDEN_DOT")}
            worst = max(worst, compiled.metadata.shared)
            lines.append(f"| {fn.__name__} | {dtype} | {shown} | {config.num_warps} / {config.num_stages} | "
                         f"{compiled.metadata.shared / 1024:.0f} | {time.perf_counter() - start:.1f} |")
            print(lines[-1], flush=True)
    lines += ["", f"{len(lines) - 6} compiles, all succeeded; largest shared memory {worst / 1024:.0f} KB."]
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    print(lines[-1])


if __name__ == "__main__":
    main()
