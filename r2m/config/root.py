"""The whole config: one frozen dataclass per section."""

from __future__ import annotations

from dataclasses import dataclass, field

from r2m.config.checks import _check
from r2m.config.jobs import DemoConfig, EvalConfig, SERConfig
from r2m.config.models import PolicyConfig, RewardConfig
from r2m.config.run import DataConfig, DistConfig, RunConfig, WorldConfig
from r2m.config.training import RLConfig, RMConfig, SFTConfig


@dataclass(frozen=True)
class Config:
    """The whole configuration. Every subcommand reads the parts it needs."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run name, output root, seed, device and trackers."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Several processes: FSDP's reduce dtype, gradient sync per micro-batch, the process-group timeout."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """The gold-reward world."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset paths and prompt-length handling."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """The policy model."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The reward used by RL."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised fine-tuning."""
    rm: RMConfig = field(default_factory=RMConfig)
    """Reward-model training."""
    rl: RLConfig = field(default_factory=RLConfig)
    """Policy optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    demo: DemoConfig = field(default_factory=DemoConfig)
    """``r2m demo`` arms."""
    ser: SERConfig = field(default_factory=SERConfig)
    """``r2m ser``: Self-Evolved Reward Learning."""

    def __post_init__(self) -> None:
        budget = self.data.max_prompt_tokens + self.rl.max_new_tokens
        _check(self.reward.max_length >= budget, "reward.max_length",
               f">= data.max_prompt_tokens + rl.max_new_tokens = {budget} (the RM reads prompt and response whole)",
               self.reward.max_length)
        # GREBT (Eq. 5-7) contrasts the best and worst of each prompt's K samples: a group of one has no pair.
        _check(not self.reward.r2m.enabled or self.rl.k >= 2, "rl.k",
               ">= 2 with reward.r2m.enabled=true (GREBT compares the K samples of a prompt)", self.rl.k)
