"""Callbacks of the object API: hooks the RL loop calls (``r2m.recipes.rl.run.run_rl(callbacks=...)``)."""

from __future__ import annotations

from typing import Optional


class TrainerCallback:
    """Subclass and override what you need. A hook that returns True stops the run after the current step
    (a checkpoint is saved, as for ``rl.stop_on_alarm``); None or False continue."""

    def on_step_end(self, step: int, metrics: dict[str, float]) -> Optional[bool]:
        """After step ``step`` (1-based): its training metrics (and the evaluation's, when one was due)."""
        return None

    def on_evaluate(self, step: int, metrics: dict[str, float]) -> Optional[bool]:
        """After an evaluation at ``step`` (0: before training): the ``eval/*`` metrics."""
        return None

    def on_save(self, step: int, path: str) -> Optional[bool]:
        """After a checkpoint of ``step`` was written to ``path`` (``checkpoints/step-00000N``), and once at the end
        for the final model (``checkpoints/final``)."""
        return None
