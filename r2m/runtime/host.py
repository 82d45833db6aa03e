"""This process's host settings: torch's intra-op threads and glibc's allocator (``run.threads``, ``run.malloc``).

Why the allocator: glibc serves a block over its mmap threshold (dynamic, 32 MiB at most) with a fresh
``mmap`` and returns it with ``munmap`` when freed, so every such tensor's pages fault in, zero-filled, at
their first touch, on every allocation. Activations of a few hundred sequences cross that size; measured
on 2 cores (issue 18), a forward+backward of a 512-wide Llama at 256 x 72 tokens then ran 1.7x slower per
sequence than at 128 x 72, elementwise ops 8-18x slower, and an RL step at twice the prompts 2.9x slower
instead of 2x. ``Malloc.HEAP`` keeps every block on the heap and freed memory there for reuse, the choice
PyTorch's own CUDA caching allocator makes for device memory. Neither setting changes a number.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from functools import lru_cache
from typing import Optional

import torch

from r2m.config.enums import Malloc
from r2m.config.run import RunConfig

log = logging.getLogger("r2m")

# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1  # mallopt takes an int: free heap top beyond 2 GiB still goes back to the OS
GLIBC_MMAP_MAX = 65536  # glibc's defaults (malloc.c: DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
GLIBC_TRIM_THRESHOLD = 128 * 1024


@lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    """The C library, when it is glibc (mallopt's parameters are glibc's); None elsewhere."""
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def set_malloc(mode: Malloc) -> bool:
    """Apply ``mode`` to this process's glibc malloc; True when applied, False where glibc is absent.

    ``SYSTEM`` restores glibc's defaults (the dynamic mmap threshold stays fixed once set, at glibc's
    128 KiB starting value, as after any explicit ``mallopt``)."""
    libc = _glibc()
    if libc is None:
        log.debug("run.malloc=%s: not glibc, nothing set", mode.value)
        return False
    if mode == Malloc.HEAP:
        settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, INT_MAX))
    else:
        settings = ((M_MMAP_MAX, GLIBC_MMAP_MAX), (M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD))
    ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        log.warning("run.malloc=%s: glibc's mallopt refused a setting; the allocator may be left as it was, or "
                    "half set", mode.value)
    return ok


_applied: Optional[Malloc] = None


def configure_host(run: RunConfig) -> None:
    """``run.threads`` (0 keeps torch's; set at every call) and ``run.malloc`` (set when it differs from the
    last one this process applied) for this process."""
    global _applied
    if run.threads:
        torch.set_num_threads(run.threads)
    if run.malloc != _applied:
        if run.malloc == Malloc.HEAP or _applied is not None:  # a fresh process already has glibc's defaults
            set_malloc(run.malloc)
        _applied = run.malloc
