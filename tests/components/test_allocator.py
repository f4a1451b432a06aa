"""`keep_freed_memory` (the CPU trainer's glibc malloc settings): large blocks come from the heap and stay in
the process when freed, so a step's 40-80 MB buffers are not page-faulted back every step; the user's own
allocator settings win. Each case runs in a fresh interpreter (malloc settings are process-wide)."""

import platform
import subprocess
import sys

import pytest

_libc, _version = platform.libc_ver()
pytestmark = pytest.mark.skipif(
    _libc != "glibc" or tuple(int(p) for p in _version.split(".")[:2]) < (2, 33),
    reason="glibc malloc settings, read back with mallinfo2 (glibc >= 2.33)")

# mallinfo2 (glibc >= 2.33): hblks counts the blocks mmap holds, uordblks the heap's bytes in use, arena its size
PROBE = """
import ctypes, sys
from longer_train.components.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory()
before = libc.mallinfo2()  # importing torch has mmapped blocks of its own
block = libc.malloc(80 << 20)  # as large as the dense step's largest buffers at 10k events
held = libc.mallinfo2()
libc.free(block)
freed = libc.mallinfo2()
print(applied, held.hblks - before.hblks, held.uordblks - before.uordblks >= 80 << 20,
      freed.arena - before.arena >= 80 << 20)
"""


def _probe(env_extra: dict) -> list[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **env_extra}, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_large_blocks_come_from_the_heap_and_stay_there_when_freed():
    applied, mmapped, in_heap, kept = _probe({})
    assert applied == "True"
    assert mmapped == "0" and in_heap == "True"  # not an mmap of its own: from the heap
    assert kept == "True"  # freed, the heap keeps it (below the 1 GiB trim threshold) for the next step


def test_glibc_defaults_mmap_large_blocks_and_the_user_s_settings_win():
    applied, mmapped, in_heap, _ = _probe({"MALLOC_ARENA_MAX": "2"})  # a user's own MALLOC_* setting
    assert applied == "False"
    assert mmapped == "1" and in_heap == "False"  # glibc's default: a block this size is mmapped (and unmapped)
