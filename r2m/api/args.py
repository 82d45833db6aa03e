"""The trainers' arguments: flat, TRL-named fields (like ``trl.GRPOConfig``) over r2m's sectioned ``Config``.

``r2m.RLConfig(output_dir="runs/x", num_generations=4, learning_rate=1e-5, algorithm="grpo", r2m=True)`` reads
as a TRL user expects; every other r2m field is reachable through ``overrides={"rl.beta": 0.05}`` (dotted, as on
the CLI) or a YAML file (``config_file``). ``to_config()`` resolves them, in that order: file, TRL names,
r2m's own flags, overrides. The mapping is r2m.config.trl_names (also the CLI's); docs/TRL.md lists differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

from r2m.config import Config, load_config
from r2m.config.parsing import _build, _set_path, to_dict
from r2m.config.trl_names import TRL_NAMES, trl_overrides


@dataclass(frozen=True)
class TrainerArgs:
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

    section = "rl"  # the section learning_rate and save_steps refer to

    def _r2m_fields(self) -> dict[str, Any]:
        """r2m's own flat flags (subclasses): name -> dotted overrides."""
        return {}

    def to_config(self, extra: Optional[Mapping[str, Any]] = None) -> Config:
        """The resolved r2m ``Config``; ``extra`` (dotted) sits between the TRL names and ``overrides``."""
        data = to_dict(load_config(self.config_file)) if self.config_file else {}
        trl = {f.name: getattr(self, f.name) for f in fields(self) if f.name in TRL_NAMES}
        layers = [trl_overrides({k: v for k, v in trl.items() if v is not None}, self.section),
                  self._r2m_fields(), dict(extra or {}), dict(self.overrides)]
        for layer in layers:
            for dotted, value in layer.items():
                _set_path(data, dotted, to_dict(value))
        return _build(Config, data)


@dataclass(frozen=True)
class RLConfig(TrainerArgs):
    """Arguments of :class:`r2m.RLTrainer` (the ``rl`` section of a config file is ``r2m.config.RLConfig``)."""

    algorithm: Optional[str] = None
    """rl.algorithm: rloo, grpo, remax, reinforce_pp or ppo."""
    r2m: Optional[bool] = None
    """reward.r2m.enabled: R2M's feedback-fused reward model (needs a reward model, not a callable)."""
    max_steps: Optional[int] = None
    """rl.steps."""
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

    def _r2m_fields(self) -> dict[str, Any]:
        out = {"rl.algorithm": self.algorithm, "reward.r2m.enabled": self.r2m, "rl.prompts_per_step":
               self.prompts_per_step}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class RMConfig(TrainerArgs):
    """Arguments of :class:`r2m.RMTrainer` (Bradley-Terry reward-model training; the ``rm`` section)."""

    num_train_epochs: Optional[int] = None
    """rm.epochs."""
    per_device_train_batch_size: Optional[int] = None
    """rm.batch_size (per process)."""

    section = "rm"

    def _r2m_fields(self) -> dict[str, Any]:
        out = {"rm.epochs": self.num_train_epochs, "rm.batch_size": self.per_device_train_batch_size}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class SERConfig(TrainerArgs):
    """Arguments of :class:`r2m.SERTrainer` (self-evolved reward learning; the ``ser`` section via overrides:
    ``{"ser.max_loops": 2, "ser.ppo": False}``). ``learning_rate`` and ``save_steps`` are its RMs' (``rm.*``)."""

    section = "rm"
