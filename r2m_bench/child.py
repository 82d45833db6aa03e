"""``fn(*args)`` in a spawned process, its result back: a benchmark arm's memory and threads are then its own, and
nothing a previous arm imported or allocated is counted in the next."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
from typing import Any, Callable

from r2m.utils import quiet_transformers


def _child(fn: Callable, args: tuple, queue) -> None:
    quiet_transformers()
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as e:  # report, do not hang the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def in_child(spawn: bool, fn: Callable, *args) -> Any:
    """``fn(*args)`` in a spawned process, its result back (``fn``, ``args`` and the result must pickle); in this
    one unless ``spawn``. A child that fails or dies before reporting raises :class:`RuntimeError` naming ``fn``."""
    if not spawn:
        return fn(*args)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    while True:  # a child that dies before reporting (killed, or failing to start) must not hang the parent
        try:
            status, value = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"bench: {fn.__name__} died (exit code {proc.exitcode}) in its child process "
                                   "before reporting") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"bench: {fn.__name__} failed in its child process: {value}")
    return value
