"""glibc malloc tuning for CPU training: keep freed memory in the process instead of mapping it afresh.

Nothing here changes a number the project computes; it changes how fast the CPU gets there. rrsr_lib.trainer
calls :func:`keep_freed_cpu_memory` before CPU training (it imports it from rrsr_lib.device, which re-exports
it); tests/test_device.py checks its effect on page faults, and PERFORMANCE.md has what it saves.
"""
from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_freed_cpu_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_kept = False


def keep_freed_cpu_memory() -> bool:
    """Let this process reuse the memory it frees instead of handing it back to the operating system.

    A CPU training step allocates and frees tensors of tens to hundreds of MB (activations, the sampled
    taps of the deformable convolutions, their gradients). glibc's malloc serves each of them with a fresh
    ``mmap`` and returns it with ``munmap``, so every step the kernel maps and zeroes the same gigabytes again,
    a large share of a CPU step's time spent in page faults. With ``mmap`` off for malloc and heap trimming off,
    freed blocks are reused: no page faults, and shorter steps (PERFORMANCE.md has the figures). The same
    effect as starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1`` (or with jemalloc/tcmalloc,
    as CPU tuning guides advise); numbers do not change. The price: the process keeps its peak memory until
    it exits.

    Trimming is turned off completely (-1), not just set high: with the largest threshold mallopt accepts
    (2^31 - 1 bytes), a reciprocal step, which frees more than 2 GiB at once at its end, gave the top of the
    heap back every time and the next one mapped it again (hundreds of thousands of page faults per step in
    benchmarks/train.py; tests/test_device.py checks that a freed block larger than 2 GiB is kept).

    Linux with glibc only; elsewhere, or if libc cannot be loaded, nothing is changed. Process-wide and
    idempotent. Returns True if the setting is (now) in effect.
    """
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # M_TRIM_THRESHOLD = -1: never trim (mallopt(3)); M_MMAP_MAX = 0: every block from the heap
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError):
        return False
    _kept = bool(ok)
    return _kept
