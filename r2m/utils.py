"""Small shared helpers: seeding, devices, dtypes, timing, stop signals (file helpers: :mod:`r2m.fileio`)."""

from __future__ import annotations

import contextlib
import random
import time
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CUDA too) so that CPU runs are bit-reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device=cuda, but CUDA is not available on this machine")
    return torch.device(name)


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def synchronize_device() -> None:
    """Wait for the CUDA device's queued work (a no-op on the CPU, or before CUDA is initialised): kernels run
    asynchronously, so a clock read without it charges GPU time to whichever phase happens to wait next."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def device_clock() -> float:
    """``time.perf_counter()`` after :func:`synchronize_device`: a phase boundary on any device."""
    synchronize_device()
    return time.perf_counter()


class PhaseTimer:
    """Accumulates wall time per named phase (generation, reward, update, ...), synchronising the device at
    each boundary so that a phase is charged its own GPU work."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = device_clock()
        try:
            yield
        finally:
            self.totals[phase] = self.totals.get(phase, 0.0) + device_clock() - t0

    def pop(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def quiet_transformers() -> None:
    """Keep the terminal for r2m's own progress: no weight-loading bars or sharding notices."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class StopSignal:
    """Within the block, SIGINT/SIGTERM set ``requested`` instead of killing the process, so a training
    loop can finish its step and checkpoint. A second signal restores the default behaviour."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        import signal

        self.requested = True
        self.signal_name = signal.Signals(signum).name
        for sig, old in self._old.items():  # a second Ctrl-C kills as usual
            signal.signal(sig, old)

    def __enter__(self) -> "StopSignal":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


