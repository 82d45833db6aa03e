"""Small shared helpers: seeding, devices, atomic writes, timing."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from pathlib import Path
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


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success fsync it and rename it to ``final``.

    A crash leaves only a ``.tmp-*`` directory behind, never a half-written ``final``: readers
    treat the existence of ``final`` as the mark of a complete write.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        fault_point(f"atomic_dir.before_rename:{final.name}")
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            fault_point(f"atomic_dir.between_renames:{final.name}")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


FAULT_ENV = "R2M_FAULT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the crash tests: with ``R2M_FAULT=name@N`` the process SIGKILLs itself the N-th
    time it reaches the point ``name`` (N defaults to 1). Unset, this is one dictionary look-up."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temporary name and ``os.replace`` so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_savefig(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` through a temporary name: a reader (or a second writer) never sees half an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    os.replace(tmp, path)
    return path


def read_json_or_none(path: str | Path):
    """A JSON file's value; None when it does not exist, or (logged, naming it) when it is damaged: a result
    left half-written by a crash is then computed again instead of stopping a resume."""
    import json
    import logging

    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        logging.getLogger("r2m").warning("%s is damaged (%s: %s); computing it again", path, type(e).__name__, e)
        return None


class PhaseTimer:
    """Accumulates wall time per named phase (generation, reward, update, ...)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - t0

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
