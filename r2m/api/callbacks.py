"""Callbacks of the object API: hooks the loops call through ``r2m.runtime.hooks.Hooks`` (``run_rl``, ``run_rm``,
``run_ser``, each with ``callbacks=...``).

``RLTrainer``: ``step`` is the RL step. ``RMTrainer``: the optimiser step (``on_step_end`` after each, with that
step's ``rm/loss``, ``rm/lr``, ``rm/grad_norm``, ``rm/train_acc``; ``on_evaluate`` once, after training, with the
held-out ``rm/eval_acc``). ``SERTrainer``: ``step`` is the SER loop (``on_save`` with the loop's RM, then
``on_evaluate`` with its history row); its PPO stage then calls them as ``RLTrainer`` does, from step 0.
"""

from __future__ import annotations

from typing import Optional


class TrainerCallback:
    """Subclass and override what you need. A hook that returns True stops the run after the current step
    (a checkpoint is saved, as for ``rl.stop_on_alarm``; RM training still saves its final model; SER ends its
    loop with the stop reason ``callback``); None or False continue."""

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
