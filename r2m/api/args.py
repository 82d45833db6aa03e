"""r2m's own trainer arguments: flat, TRL-named fields over r2m's sectioned ``Config``.

``r2m.RLArguments(output_dir="runs/x", num_generations=4, learning_rate=1e-5, algorithm="grpo", r2m=True)`` maps
only the fields given (over r2m's defaults); every other r2m field is reachable through ``overrides={"rl.beta":
0.05}`` (dotted, as on the CLI) or a YAML file (``config_file``). The trainers also take TRL's own ``GRPOConfig``,
``RLOOConfig`` and ``RewardConfig`` (:mod:`r2m.api.trl_args`), which mean exactly what they mean to TRL.
``to_config()`` resolves, in order: file, TRL names, r2m's own flags, ``extra``, overrides (r2m.config.trl_map).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

from r2m.config.root import Config
from r2m.config.parsing import load_config
from r2m.config.trl_map import map_trl
from r2m.config.trl_names import RULES


@dataclass(frozen=True)
class TrainerArguments:
    """Fields shared by the three trainers' arguments (None: r2m's default, or the config file's value)."""

    output_dir: Optional[str] = None
    """The run directory: run.root / run.name (trackers are named after run.name)."""
    learning_rate: Optional[float] = None
    """The trained section's lr (rl.lr, rm.lr)."""
    seed: Optional[int] = None
    """run.seed."""
    bf16: Optional[bool] = None
    """True: run.mixed_precision=bf16."""
    report_to: Optional[Any] = None
    """run.log_with: "tensorboard", "wandb", a list of them, or "none"."""
    save_steps: Optional[int] = None
    """The trained section's save_every (0: checkpoints only at the end)."""
    config_file: Optional[str] = None
    """An r2m YAML config to start from (``r2m config`` prints one)."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Any r2m field, dotted as on the CLI: ``{"rl.beta": 0.05, "data.format": "trl"}``; applied last."""

    command = "rl"  # the subcommand whose names these are (learning_rate and save_steps: its section)

    def trl_values(self) -> dict[str, Any]:
        """The TRL-named fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in RULES and getattr(self, f.name) is not None}

    def r2m_fields(self) -> dict[str, Any]:
        """r2m's own flat flags (subclasses): dotted overrides."""
        return {}

    def layers(self, extra: Optional[Mapping[str, Any]] = None) -> list[dict]:
        """The dotted layers over the config file: TRL names, r2m's flags, ``extra``, overrides."""
        trl = map_trl(self.trl_values(), self.command).overrides
        return [trl, self.r2m_fields(), dict(extra or {}), dict(self.overrides)]

    def to_config(self, extra: Optional[Mapping[str, Any]] = None) -> Config:
        """The resolved r2m ``Config``; ``extra`` (dotted) sits between the TRL names and ``overrides``."""
        return load_config(self.config_file, layers=self.layers(extra))


@dataclass(frozen=True)
class RLArguments(TrainerArguments):
    """Arguments of :class:`r2m.RLTrainer` (a ``trl.GRPOConfig`` or ``RLOOConfig`` works too)."""

    algorithm: Optional[str] = None
    """rl.algorithm: rloo, grpo, remax, reinforce_pp or ppo."""
    r2m: Optional[bool] = None
    """reward.r2m.enabled: R2M's feedback-fused reward model (needs a reward model, not only callables)."""
    max_steps: Optional[int] = None
    """rl.steps (RL steps; a GRPOConfig's max_steps counts optimiser steps)."""
    num_generations: Optional[int] = None
    """rl.k: samples per prompt."""
    max_completion_length: Optional[int] = None
    """rl.max_new_tokens."""
    epsilon: Optional[float] = None
    """rl.clip_eps."""
    beta: Optional[float] = None
    """rl.beta: the KL coefficient."""
    num_iterations: Optional[int] = None
    """rl.epochs: optimisation epochs per batch of experience."""
    prompts_per_step: Optional[int] = None
    """rl.prompts_per_step (TRL counts completions per device instead: per_device_train_batch_size)."""

    def r2m_fields(self) -> dict[str, Any]:
        out = {"rl.algorithm": self.algorithm, "reward.r2m.enabled": self.r2m, "rl.prompts_per_step":
               self.prompts_per_step}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class RMArguments(TrainerArguments):
    """Arguments of :class:`r2m.RMTrainer` (Bradley-Terry reward-model training; a ``trl.RewardConfig`` works too)."""

    num_train_epochs: Optional[int] = None
    """rm.epochs."""
    per_device_train_batch_size: Optional[int] = None
    """rm.batch_size (per process)."""

    command = "rm"


@dataclass(frozen=True)
class SERArguments(TrainerArguments):
    """Arguments of :class:`r2m.SERTrainer` (self-evolved reward learning; the ``ser`` section via overrides:
    ``{"ser.max_loops": 2, "ser.ppo": False}``). ``learning_rate`` and ``save_steps`` are its RMs' (``rm.*``)."""

    command = "rm"
