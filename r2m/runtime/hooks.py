"""The loops' callbacks (RL, RM, SER): the object API's ``TrainerCallback``s, duck-typed (any object with some
of the hooks)."""

from __future__ import annotations

from typing import Any, Sequence


class Hooks:
    """Calls ``hook(*args)`` on each callback that has it; remembers whether one asked to stop (returned True)."""

    def __init__(self, callbacks: Sequence[Any] = ()):
        self.callbacks = list(callbacks)
        self.stop_requested = False

    def __call__(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None and fn(*args) is True:
                self.stop_requested = True
