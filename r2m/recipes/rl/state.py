"""What one RL run holds: :class:`RLComponents`, a plain dataclass of its parts, built by
:func:`r2m.recipes.rl.build.build_run`. The step (:func:`r2m.recipes.rl.step.train_step`) reads it; checkpoints,
evaluation and the run's end take only the parts they read (:class:`Models`, :class:`Resumable`, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

import torch
from torch import nn

if TYPE_CHECKING:  # the types of the fields; nothing here is needed to build them
    from r2m.config.root import Config
    from r2m.core.kl_control import KLController
    from r2m.core.reward_shaping import RunningMoments
    from r2m.eval.policy import PolicySamples
    from r2m.experience.generation import HFGenerator
    from r2m.experience.rewards import FeedbackReward, RewardFunction
    from r2m.experience.rollout import ExperienceMaker
    from r2m.experience.sampling import PromptSet
    from r2m.recipes.alarm import AlarmWatch
    from r2m.recipes.pipeline import Inputs
    from r2m.recipes.rl.setup import PromptSampler, StreamSampler
    from r2m.runtime.distributed import Dist
    from r2m.runtime.runlog import RunDir
    from r2m.updates.grebt import GREBTUpdater
    from r2m.updates.policy import PolicyUpdater
    from r2m.utils import PhaseTimer


@dataclass
class Models:
    """The networks of the run, as accelerate placed them."""

    acc: Any
    """The ``accelerate.Accelerator`` (device, processes, mixed precision)."""
    tokenizer: Any
    """The policy's tokenizer."""
    policy: nn.Module
    """The trained policy as accelerate prepared it (wrapped by DDP, FSDP or DeepSpeed under several processes)."""
    ref: nn.Module
    """The frozen reference (with LoRA: the policy with its adapters off)."""
    critic: Optional[nn.Module] = None
    """PPO's value model (None for the other algorithms)."""

    @property
    def device(self) -> torch.device:
        return self.acc.device

    def unwrapped_policy(self) -> nn.Module:
        """The policy without accelerate's wrappers (the module whose weights are saved)."""
        return self.acc.unwrap_model(self.policy)


@dataclass
class Progress:
    """Where the run is: what a checkpoint carries besides the components' own states."""

    start_step: int = 0
    """The step the run continues after: the resumed checkpoint's step, 0 for a new run."""
    bad_steps: int = 0
    """Consecutive steps skipped, or whose every minibatch was skipped, for NaN/inf (``run.max_bad_steps``)."""
    saved_step: Optional[int] = None
    """The last step with a checkpoint: saved by this run, or the one it resumed from."""
    r2m_before: Optional[dict[str, torch.Tensor]] = None
    """R2M's trainable state as the first rollout batch left it (after init=matched): Table 3's "before"."""


class Resumable(NamedTuple):
    """The parts a checkpoint saves and a resume restores."""

    models: Models
    optimizer: torch.optim.Optimizer
    lr_scheduler: Optional[Any]
    critic_optimizer: Optional[torch.optim.Optimizer]
    kl_ctl: "KLController"
    sampler: Union["PromptSampler", "StreamSampler"]
    moments: Optional["RunningMoments"]
    """The reward normaliser's running statistics (``reward.normalize``)."""
    grebt: Optional["GREBTUpdater"]
    """R2M's update: its model's fusion and head, and its optimiser."""
    progress: Progress
    rm_path: Optional[str]
    """The base RM that R2M's saved weights name."""


@dataclass
class Evaluation:
    """The policy's evaluation on the fixed prompt set, and what it keeps between evaluations."""

    prompts: "PromptSet"
    """The evaluation prompts (empty: the run does not evaluate)."""
    reward_fn: "RewardFunction"
    gold_fn: Optional["RewardFunction"]
    sft_samples: Optional["PolicySamples"] = None
    """The SFT policy's samples (step 0's), that later evaluations compare with."""
    last: dict[str, float] = field(default_factory=dict)
    """The last evaluation's metrics (the run's final evaluation at its end)."""

    @property
    def enabled(self) -> bool:
        return bool(self.prompts.texts)


@dataclass
class RLComponents:
    """One RL run's parts (see :func:`r2m.recipes.rl.build.build_run`)."""

    cfg: "Config"
    inputs: "Inputs"
    """Every path the run reads (models and data), resolved."""
    dist: "Dist"
    models: Models
    optimizer: torch.optim.Optimizer
    lr_scheduler: Optional[Any]
    critic_optimizer: Optional[torch.optim.Optimizer]
    reward_fn: "RewardFunction"
    """The run's reward: the primary (gold, an RM, R2M) weighted with any extra reward functions."""
    r2m: Optional["FeedbackReward"]
    """R2M's reward (or the Iterative RM-head baseline's), when the primary is one."""
    sampler: Union["PromptSampler", "StreamSampler"]
    """The order the training prompts are taken in."""
    train_prompts: "PromptSet"
    """The training prompts (a stream's first ones), for the setup checks."""
    prompt_stats: dict[str, float]
    """The prompt sets' cut, skipped and capped counts, logged at step 1."""
    generator: "HFGenerator"
    """Samples rollouts (Hugging Face ``generate`` or vLLM); gets the policy's weights after each update."""
    maker: "ExperienceMaker"
    updater: "PolicyUpdater"
    grebt: Optional["GREBTUpdater"]
    """R2M's GREBT update of the RM's fusion and head after each policy step (None without R2M)."""
    kl_ctl: "KLController"
    timer: "PhaseTimer"
    """Times the step's phases (``time/*``); the maker shares it. A profiler may stand in for it."""
    run: "RunDir"
    evaluation: Evaluation
    watch: "AlarmWatch"
    """The over-optimisation monitor and alarm, at each evaluation."""
    progress: Progress = field(default_factory=Progress)
    t_start: float = 0.0
    """``time.perf_counter()`` when the run began."""

    @property
    def resumable(self) -> Resumable:
        return Resumable(self.models, self.optimizer, self.lr_scheduler, self.critic_optimizer, self.kl_ctl,
                         self.sampler, self.maker.moments, self.grebt, self.progress,
                         None if self.inputs.reward_model is None else str(self.inputs.reward_model))
