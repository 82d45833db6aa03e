"""Callbacks of the object API: r2m's own (:class:`TrainerCallback`, ``(step, metrics)``) and transformers'
``TrainerCallback`` (``(args, state, control, **kwargs)``), both driven by the loops' hooks
(``r2m.runtime.hooks.Hooks``: ``run_rl``, ``run_rm``, ``run_ser``, each with ``callbacks=...``).

``RLTrainer``: ``step`` is the RL step. ``RMTrainer``: the optimiser step (``on_step_end`` after each, with that
step's ``rm/loss``, ``rm/lr``, ``rm/grad_norm``, ``rm/train_acc``; ``on_evaluate`` once, after training, with the
held-out ``rm/eval_acc``). ``SERTrainer``: ``step`` is the SER loop (``on_save`` with the loop's RM, then
``on_evaluate`` with its history row); its PPO stage then calls them as ``RLTrainer`` does, from step 0.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from r2m.errors import ConfigError


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


_R2M_HOOKS = ("on_step_end", "on_evaluate", "on_save")


def is_transformers_callback(cb: Any) -> bool:
    return any(c.__name__ == "TrainerCallback" and c.__module__.startswith("transformers")
               for c in (cb if isinstance(cb, type) else type(cb)).__mro__)


def check_callbacks(callbacks: Any) -> list:
    """The ``callbacks`` argument as a list of r2m or transformers callbacks (a class is instantiated, as
    transformers does; a single callback object is refused: it is easy to pass by mistake)."""
    if callbacks is None:
        return []
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, (list, tuple)):
        raise ConfigError(f"callbacks: expected a list of callbacks (transformers.TrainerCallback or "
                          f"r2m.TrainerCallback), got {type(callbacks).__name__}")
    out = []
    for i, cb in enumerate(callbacks):
        cb = cb() if isinstance(cb, type) and is_transformers_callback(cb) else cb
        if not is_transformers_callback(cb) and not any(callable(getattr(cb, h, None)) for h in _R2M_HOOKS):
            raise ConfigError(f"callbacks[{i}]: expected a transformers.TrainerCallback or an object with "
                              f"on_step_end, on_evaluate or on_save (r2m.TrainerCallback), got {type(cb).__name__}")
        out.append(cb)
    return out


class TransformersHooks:
    """transformers ``TrainerCallback``s driven by r2m's loop hooks, with the trainer's ``args``, a ``TrainerState``
    (``global_step``: the loop's step; ``log_history``: its rows) and a ``TrainerControl``, whose
    ``should_training_stop`` stops the run after the current step. ``on_log`` gets each step's metrics."""

    def __init__(self, callbacks: Sequence[Any], args: Any, state: Any, model: Any = None,
                 processing_class: Any = None):
        from transformers import TrainerControl

        self.callbacks, self.args, self.state = list(callbacks), args, state
        self.control = TrainerControl()
        self.kwargs = {"model": model, "processing_class": processing_class}

    def _event(self, name: str, **kwargs: Any) -> bool:
        for cb in self.callbacks:
            out = getattr(cb, name)(self.args, self.state, self.control, **self.kwargs, **kwargs)
            if out is not None:
                self.control = out  # transformers' CallbackHandler keeps a returned control
        return bool(self.control.should_training_stop)

    def on_train_begin(self) -> None:
        self._event("on_train_begin")

    def on_train_end(self) -> None:
        self._event("on_train_end")

    def on_step_begin(self, step: int) -> bool:
        self.state.global_step = step - 1
        return self._event("on_step_begin")

    def on_step_end(self, step: int, metrics: dict) -> bool:
        self.state.global_step = step
        self.state.log_history.append({**metrics, "step": step})
        self._event("on_log", logs=dict(metrics))
        return self._event("on_step_end")

    def on_evaluate(self, step: int, metrics: dict) -> bool:
        self.state.global_step = step
        return self._event("on_evaluate", metrics=dict(metrics))

    def on_save(self, step: int, path: str) -> bool:
        self.state.global_step = step
        return self._event("on_save")


def trainer_state(max_steps: int, is_main: bool = True) -> Any:
    """A transformers ``TrainerState`` for ``max_steps`` steps."""
    from transformers import TrainerState

    return TrainerState(max_steps=max_steps, is_local_process_zero=is_main, is_world_process_zero=is_main)


def callback_args(trl_args: Any, output_dir: str, max_steps: int, cpu: bool) -> Any:
    """The callbacks' ``args``: the TRL / transformers object the trainer was given, else a ``TrainingArguments``
    of the run (output_dir, max_steps)."""
    if trl_args is not None:
        return trl_args
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=output_dir, max_steps=max_steps, report_to="none", use_cpu=cpu)
