"""The C heap's policy (glibc malloc): keep freed host memory in CPU training processes, give it back in a
serving process.

A CPU training step allocates and frees the same few large activation and gradient buffers (MBs to tens of
MBs) every step. With glibc's defaults, blocks that size are often handed back to the kernel when freed (mmap
above a threshold that adapts to what was freed, and the heap top trimmed above twice that) and fetched
again at the next step, each 4 KiB page faulted in and zeroed by the kernel, how often varying run to run
with the order of frees. So large blocks come from the heap instead (no mmap for them in the main arena: a
fixed mmap threshold would still send the long-history step's largest buffers, above it, to the kernel every
step), and up to 1 GiB of freed heap is kept: those blocks come
back already mapped (tcmalloc and jemalloc, which PyTorch's CPU tuning guide recommends preloading, do the
same by caching). What is kept is memory the step needs again; the peak grows by what fragmentation leaves
between the blocks (benchmarks/results/dense_step_malloc_cpu.md measures it). Other threads' arenas, and a heap
that cannot grow, still fall back to mmap, so no allocation fails that would have succeeded.

Applied once per training process on CPU (`Trainer`, and benchmarks/dense_step.py as the trainer runs); a
no-op off glibc (macOS, musl) or when the user has set glibc's own MALLOC_* variables or preloaded another
allocator.

`release_free_memory` is the opposite, for a long-lived server: after a large request body is freed, the C heap's
free pages go back to the system (serve/http.py), so a burst of large bodies does not stay resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (above); True if they were set."""
    if any(k.startswith("MALLOC_") for k in os.environ) or "LD_PRELOAD" in os.environ:
        return False  # the user chose the allocator's settings
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    # the threshold too: a glibc whose mmap cannot be switched off still keeps blocks up to 32 MiB
    ok = all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_MMAP_MAX, 0)))
    log.debug("glibc malloc: no mmap in the main arena (threshold %d), trim threshold %d (%s)", MMAP_THRESHOLD,
              TRIM_THRESHOLD, "set" if ok else "refused")
    return ok


def release_free_memory() -> None:
    """glibc's malloc_trim(0): free pages of the C heap go back to the system; elsewhere (musl, macOS) nothing."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
