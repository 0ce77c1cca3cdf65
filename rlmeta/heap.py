"""Keep freed memory in the process: large tensors reuse the heap instead of fresh pages from the kernel.

glibc's ``malloc`` serves a block above its mmap threshold (128 KiB at first, raised dynamically up to
the size of blocks freed) with a fresh ``mmap`` and returns it with ``munmap`` when freed; memory at
the top of the heap beyond the trim threshold goes back to the kernel too. Either way the next tensor
of that size starts on pages the kernel must fault in and zero, once per 4 KiB page. A training step
on small networks allocates and frees dozens of activations of a few MB each (Snake 6x6 at 64 x 16:
``[1088, 16, 6, 6]`` floats, 2.5 MB), so it pays this on every op. Measured on the 2-core machine
(2026-12-02, one-step meta A2C at 64 x 16, 1 thread): the tangent pass of a meta-update took 12.9 ms
with glibc's defaults and 8.8 ms with the thresholds below; a plain A2C iteration 30.6 against 25.3
ms (``docs/benchmarks.md``).

:func:`keep_freed_memory` fixes the mmap threshold at glibc's maximum (32 MiB: larger blocks still
get their own mapping) and raises the trim threshold, so freed blocks stay in the heap for the next
op. The price is the one any caching allocator makes: the process keeps its peak heap. It is called
once by the training entry points (``rlmeta.agents.runs.set_threads``); ``RLMETA_KEEP_FREED_MEMORY=0``
turns it off. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring), once per process; returns whether
    they are set (False: not glibc, or turned off by ``RLMETA_KEEP_FREED_MEMORY=0``)."""
    global _done
    if _done is not None:
        return _done
    setting = os.environ.get("RLMETA_KEEP_FREED_MEMORY", "1").strip()
    if setting not in ("0", "1"):
        raise ValueError(f"RLMETA_KEEP_FREED_MEMORY must be 0 or 1, got {setting!r}")
    _done = False
    if setting == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done


__all__ = ["keep_freed_memory"]
