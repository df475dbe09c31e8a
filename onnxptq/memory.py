"""Resident memory of this process (Linux /proc, else psutil, else the peak from getrusage)."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import sys

HEADROOM = 0.25  # of the free budget kept for the training step's own tensors (batch activations, gradients)
MIN_HEADROOM_MB = 256.0


def rss_bytes() -> int:
    """Current resident set size in bytes."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cache_budget_mb(max_memory_mb: float, rss: int | None = None, reserve_mb: float = 0.0) -> float:
    """RAM the activation cache may use so the process stays under ``max_memory_mb``: what is left after the
    current resident set, minus headroom for the training step: max(25 % of what is left, 256 MB,
    ``reserve_mb``, the caller's estimate of one batch's tensors)."""
    used = (rss_bytes() if rss is None else rss) / 2**20
    free = max_memory_mb - used
    return max(0.0, free - max(HEADROOM * free, MIN_HEADROOM_MB, reserve_mb))


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere). Torch's CPU tensors
    of a few MB come from malloc's heap; freed, they stay in the resident set until trimmed, so a long run
    of region after region grows its RSS without holding more data."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
