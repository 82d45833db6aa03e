"""Wall time and peak memory per phase (generation, reward annotation, policy update, RM update, ...).

:class:`PhaseProfiler` is a drop-in :class:`r2m.utils.PhaseTimer` (same ``with timer("phase"):`` and
``pop()``) that also records, per phase, the peak memory reached while the phase ran:

- **CPU**: the process's resident set size (RSS), sampled by a daemon thread every ``interval_s``
  (5 ms by default) and once at each phase boundary. ``getrusage``'s ``ru_maxrss`` cannot do this: it
  is the peak over the process's whole life, so it never goes down between phases. The RSS is read
  from ``/proc/self/statm`` (Linux; one small read, a few microseconds) or through ``psutil`` elsewhere.
  **Resolution**: a spike shorter than the interval that starts and ends between two samples can be
  missed; allocations that stay for at least one interval, and anything alive at a phase boundary,
  are seen. The process's lifetime peak (``VmHWM``, see :func:`lifetime_peak_rss_mb`) is an upper bound.
- **CUDA** (when CUDA is initialised in the process): ``torch.cuda.reset_peak_memory_stats()`` at the
  start of a phase and ``torch.cuda.max_memory_allocated()`` at its end, exact (the caching
  allocator's own counter; memory reserved but not allocated is not counted). Phase boundaries call
  ``torch.cuda.synchronize()`` so that the phase's wall time includes its kernels.

Phases may nest: an inner phase's peak counts towards the phases around it. Per phase, over all the
times it ran since the last :meth:`PhaseProfiler.pop_memory`, the profiler keeps the highest peak
(``peak_rss_mb``, ``cuda_peak_mb``) and the highest growth over the value at the phase's start
(``rss_growth_mb``, ``cuda_growth_mb``): what the phase itself added on top of what was already held.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from r2m.utils import PhaseTimer

MB = 2**20


def _statm_reader() -> Optional[Callable[[], int]]:
    try:
        fd = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def read() -> int:
        return int(os.pread(fd, 64, 0).split()[1]) * page

    try:
        read()
    except (OSError, ValueError, IndexError):
        os.close(fd)
        return None
    return read


@functools.lru_cache(maxsize=None)
def rss_reader() -> tuple[Callable[[], int], str]:
    """A function returning the current RSS in bytes, and the name of the method it uses."""
    read = _statm_reader()
    if read is not None:
        return read, "/proc/self/statm"
    try:
        import psutil

        proc = psutil.Process()
        return (lambda: proc.memory_info().rss), "psutil"
    except ImportError:  # last resort: the lifetime peak (monotone; per-phase numbers become upper bounds)
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return (lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale), "ru_maxrss"


def lifetime_peak_rss_mb() -> float:
    """The process's peak RSS since it started, in MiB: ``VmHWM`` of ``/proc/self/status`` on Linux,
    else ``ru_maxrss``.

    ``ru_maxrss`` is wrong for a process started by ``multiprocessing``'s spawn (fork, then exec): Linux
    folds the forked copy of the parent's memory into it at exec, so a child of a 2 GB parent reports
    at least 2 GB. ``VmHWM`` belongs to the process's own address space, created at exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    scale = 1 / MB if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def cuda_in_use() -> bool:
    """CUDA is available and already initialised here (asking never initialises it)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_initialized()


@dataclass
class _Frame:
    phase: str
    t0: float
    rss_start: int
    rss_peak: int
    cuda_start: int = 0
    cuda_peak: int = 0


class RSSSampler:
    """A daemon thread that reads the RSS every ``interval_s`` and raises the peak of every open frame."""

    def __init__(self, interval_s: float = 0.005):
        self.read, self.method = rss_reader()
        self.interval_s = interval_s
        self.frames: list[_Frame] = []
        self.lock = threading.Lock()
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sample(self) -> int:
        rss = self.read()
        with self.lock:
            self.samples += 1
            for f in self.frames:
                if rss > f.rss_peak:
                    f.rss_peak = rss
        return rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except (OSError, ValueError):  # never take the process down for a measurement
                return

    def start(self) -> None:
        if self._thread is None and self.interval_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="r2m-rss-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class PhaseProfiler(PhaseTimer):
    """:class:`PhaseTimer` plus peak memory per phase (CPU RSS; CUDA max-allocated where CUDA is in use).

    ``interval_s=0`` turns the sampling thread off: the RSS is then read at phase boundaries only.
    Call :meth:`close` (or use it as a context manager) to stop the thread.
    """

    def __init__(self, interval_s: float = 0.005, cuda: Optional[bool] = None):
        super().__init__()
        self.sampler = RSSSampler(interval_s)
        self._cuda = cuda
        self.memory: dict[str, dict[str, float]] = {}
        self.laps: dict[str, float] = {}
        self.sampler.start()

    @property
    def rss_method(self) -> str:
        return self.sampler.method

    def uses_cuda(self) -> bool:
        return cuda_in_use() if self._cuda is None else self._cuda

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        import torch

        cuda = self.uses_cuda()
        if cuda:
            torch.cuda.synchronize()
        rss = self.sampler.sample()
        frame = _Frame(phase, 0.0, rss, rss)
        if cuda:
            # Fold the peak so far into the enclosing phases before resetting the counter for this one.
            current_peak = torch.cuda.max_memory_allocated()
            for f in self.sampler.frames:
                f.cuda_peak = max(f.cuda_peak, current_peak)
            torch.cuda.reset_peak_memory_stats()
            frame.cuda_start = frame.cuda_peak = torch.cuda.memory_allocated()
        with self.sampler.lock:
            self.sampler.frames.append(frame)
        frame.t0 = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - frame.t0
            self.sampler.sample()
            with self.sampler.lock:
                self.sampler.frames.remove(frame)
            if cuda:
                peak = torch.cuda.max_memory_allocated()
                frame.cuda_peak = max(frame.cuda_peak, peak)
                for f in self.sampler.frames:  # the enclosing phases saw this peak too
                    f.cuda_peak = max(f.cuda_peak, frame.cuda_peak)
            self.totals[phase] = self.totals.get(phase, 0.0) + elapsed
            self.laps[phase] = self.laps.get(phase, 0.0) + elapsed
            self._record(frame, cuda)

    def _record(self, frame: _Frame, cuda: bool) -> None:
        new = {"peak_rss_mb": frame.rss_peak / MB, "rss_growth_mb": (frame.rss_peak - frame.rss_start) / MB}
        if cuda:
            new.update(cuda_peak_mb=frame.cuda_peak / MB, cuda_growth_mb=(frame.cuda_peak - frame.cuda_start) / MB)
        old = self.memory.setdefault(frame.phase, {})
        for k, v in new.items():
            old[k] = max(old.get(k, v), v)

    def pop_laps(self) -> dict[str, float]:
        """Wall time per phase since the last call (like :meth:`pop`, but on a record of its own, so a
        caller can read what the owner of the timer already popped)."""
        out, self.laps = self.laps, {}
        return out

    def pop_memory(self) -> dict[str, dict[str, float]]:
        """Per phase since the last call: ``peak_rss_mb``, ``rss_growth_mb`` and, with CUDA,
        ``cuda_peak_mb``, ``cuda_growth_mb`` (MiB)."""
        out, self.memory = self.memory, {}
        return out

    def close(self) -> None:
        self.sampler.stop()

    def __enter__(self) -> "PhaseProfiler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def profile_method(obj: Any, name: str, profiler: PhaseTimer, phase: str) -> bool:
    """Time ``obj.name(...)`` as ``phase`` from now on (an instance attribute shadows the method).

    Lets a benchmark measure a phase of code it does not own without editing it. False (and nothing
    changed) when ``obj`` is None or has no such method.
    """
    method = getattr(obj, name, None) if obj is not None else None
    if method is None or not callable(method):
        return False

    def timed(*args, **kwargs):
        with profiler(phase):
            return method(*args, **kwargs)

    setattr(obj, name, timed)
    return True


def merge_peaks(rows: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """The per-phase maximum of several :meth:`PhaseProfiler.pop_memory` results."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        for phase, stats in row.items():
            cur = out.setdefault(phase, {})
            for k, v in stats.items():
                cur[k] = max(cur.get(k, v), v)
    return out
