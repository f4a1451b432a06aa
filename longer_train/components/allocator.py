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

What fragmentation leaves is bounded by `HeapBound`, called after every training step and evaluation batch:
with histories of varying length (every batch padded to its own longest history) the blocks a step asks for
change size from step to step, freed blocks too small for the next step's sit between blocks still in use, and
the heap grew without end: the final model on MovieLens at 2,000 events held 9.9 GB after 150 steps (~40 MB a
step) and two runs side by side were killed by the kernel's OOM killer. When the heap has grown by more than
256 MiB since the last trim, malloc_trim(0) gives its free pages back to the kernel (they stay reserved; the
pages the next steps touch are faulted in again). A 1 GiB allowance was not enough: trimmed holes are faulted
in again as steps reuse them, and two such runs still reached 10 GB each by step 380.

Applied once per training process on CPU (`Trainer`, and benchmarks/dense_step.py as the trainer runs); a
no-op off glibc (macOS, musl), on a glibc too old to report the heap's size (mallinfo2, glibc >= 2.33, which
`HeapBound` needs), or when the user has set glibc's own MALLOC_* variables or preloaded another allocator.

`release_free_memory` is the opposite, for a long-lived server: after a large request body is freed, the C heap's
free pages go back to the system (serve/http.py), so a burst of large bodies does not stay resident.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 1 << 30
HEAP_SLACK = 256 << 20  # HeapBound: growth of the heap between trims (a few steps' worth at 2,000 events)


class MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc >= 2.33): `arena` is the bytes the heaps hold (not mmapped blocks)."""
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache  # find_library runs ldconfig: once per process, not once per step
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def heap_bytes() -> int | None:
    """The bytes glibc's heaps hold (mallinfo2's arena: in use, free, and free pages already given back);
    None where mallinfo2 is missing (not glibc, or glibc < 2.33)."""
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = MallInfo2
    return int(mallinfo2().arena)


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (above); True if they were set."""
    if any(k.startswith("MALLOC_") for k in os.environ) or "LD_PRELOAD" in os.environ:
        return False  # the user chose the allocator's settings
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or heap_bytes() is None:  # not glibc, or no mallinfo2 for HeapBound to watch the heap
        return False
    # the threshold too: a glibc whose mmap cannot be switched off still keeps blocks up to 32 MiB
    ok = all(mallopt(option, value) == 1 for option, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_MMAP_MAX, 0)))
    log.debug("glibc malloc: no mmap in the main arena (threshold %d), trim threshold %d (%s)", MMAP_THRESHOLD,
              TRIM_THRESHOLD, "set" if ok else "refused")
    return ok


def release_free_memory() -> None:
    """glibc's malloc_trim(0): free pages of the C heap go back to the system; elsewhere (musl, macOS) nothing."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


class HeapBound:
    """Bounds the heap that `keep_freed_memory` lets grow: called after each step, it gives the free pages back
    (`release_free_memory`) when the heaps have grown by more than `slack` bytes since the last time, and
    returns whether it did. A heap that stops growing (the same blocks reused step after step) is never
    trimmed, so the steps keep their pages. `enabled=False` (the settings were not applied): never trims."""

    def __init__(self, enabled: bool, slack: int = HEAP_SLACK, read=heap_bytes, trim=release_free_memory):
        self.enabled, self.slack, self.read, self.trim = enabled, slack, read, trim
        self.base = read() if enabled else None
        self.trims = 0

    def __call__(self) -> bool:
        if self.base is None:
            return False
        size = self.read()
        if size - self.base <= self.slack:
            return False
        self.trim()
        self.base, self.trims = size, self.trims + 1  # given back but still reserved: growth counts from here
        log.debug("glibc malloc: heap grew to %d bytes, free pages given back (%d times)", size, self.trims)
        return True
