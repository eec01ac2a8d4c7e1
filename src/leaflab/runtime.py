"""Process-wide CPU runtime setting that leaflab's own entry points (stage scripts, benchmarks) apply.

glibc serves every allocation above 128 KiB–32 MiB with a fresh mmap and unmaps it on free, so each new
activation tensor is page-faulted in again (first touch of every 4 KiB page). On the 2-core machine in
BENCHMARKS.md that fault cost made elementwise ops on frontend-sized tensors 5–10× slower than on reused memory,
and the frontends' forward+backward 1.3–1.8× slower. `retain_freed_memory` tells glibc to serve large blocks from
its heap and keep freed memory for reuse (peak RSS then stays allocated until the process ends). A no-op where
the C library is not glibc. Library users can call it at the start of their own scripts.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1   # mallopt parameters from glibc's malloc.h
_M_MMAP_MAX = -4
_applied = False


def retain_freed_memory() -> bool:
    """Disable mmap-per-allocation and heap trimming in glibc's malloc; True if applied (idempotent)."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _applied = ok
    return ok
