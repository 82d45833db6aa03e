"""r2m.runtime.host: run.threads and run.malloc (glibc's allocator keeps large tensors on its heap)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r2m.config.enums import Malloc
from r2m.config.run import RunConfig
from r2m.runtime import host

pytestmark = pytest.mark.skipif(host._glibc() is None, reason="run.malloc acts on glibc only")


PROBE = """
import ctypes, sys
import torch
from r2m.config.enums import Malloc
from r2m.runtime import host

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = host._glibc()
libc.mallinfo2.restype = MallInfo2

def mmapped_while_holding(nbytes):
    before = libc.mallinfo2().hblkhd
    t = torch.empty(nbytes // 4).fill_(0.7)  # touched: its pages are in
    during = libc.mallinfo2().hblkhd
    del t
    return during - before

size = 64 * 2**20  # over glibc's largest mmap threshold (32 MiB)
if sys.argv[1] == "heap":
    assert host.set_malloc(Malloc.HEAP)
print(mmapped_while_holding(size), mmapped_while_holding(size))
"""


def mmapped_bytes(mode: str) -> list[int]:
    """In a fresh process (the heap of this one holds what earlier tests freed): glibc's bytes in mmapped
    blocks while a 64 MiB tensor is alive, twice, under glibc's defaults or after ``set_malloc(HEAP)``."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    return [int(x) for x in out.stdout.split()]


def test_heap_serves_large_tensors_from_the_heap():
    assert all(b >= 64 * 2**20 for b in mmapped_bytes("system"))  # glibc's default: a fresh mapping each time
    assert mmapped_bytes("heap") == [0, 0]  # the heap's, the second from the memory freed by the first


def test_configure_host_applies_threads_and_malloc():
    threads, applied = torch.get_num_threads(), host._applied
    try:
        host.configure_host(RunConfig(threads=1, malloc=Malloc.HEAP))
        assert torch.get_num_threads() == 1 and host._applied == Malloc.HEAP
        host.configure_host(RunConfig(malloc=Malloc.SYSTEM))
        assert host._applied == Malloc.SYSTEM
    finally:
        torch.set_num_threads(threads)
        host.set_malloc(applied or Malloc.SYSTEM)  # as the rest of the session had it
        host._applied = applied


def test_malloc_is_a_config_field():
    from r2m.config.parsing import load_config

    assert load_config(None, []).run.malloc == Malloc.HEAP
    assert load_config(None, ["run.malloc=system"]).run.malloc == Malloc.SYSTEM
