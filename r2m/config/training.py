"""The ``sft``, ``rm`` and ``rl`` sections (and ``rl.vllm``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from r2m.config.checks import _check
from r2m.config.enums import (
    Algorithm,
    CriticInit,
    Generator,
    KLEstimator,
    KLLevel,
    KLMode,
    LossAggregation,
    LRSchedule,
    OldLogprobs,
    OptimizerImpl,
    RatioLevel,
    VLLMDType,
)
from r2m.config.monitor import MonitorConfig


@dataclass(frozen=True)
class SupervisedConfig:
    """The optimiser, schedule and bookkeeping of a supervised training loop (:mod:`r2m.updates.supervised`): the
    fields ``sft`` and ``rm`` share. Errors name the section (:attr:`SECTION`)."""

    SECTION: ClassVar[str] = "supervised"

    epochs: float = 1.0
    """Passes over the training data (fractions allowed)."""
    batch_size: int = 64
    """Examples per optimiser step (SFT: sequences; RM: preference pairs)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (after the linear warmup, then the loop's decay)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.05
    """Fraction of steps of linear warmup."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    max_steps: int = 0
    """Stop after this many steps (0: as many as the epochs give)."""
    log_every: int = 20
    """Log metrics every this many steps."""
    save_every: int = 0
    """Write a resumable checkpoint (model, optimiser, scheduler, RNG) every this many steps; 0: never."""

    def __post_init__(self) -> None:
        name = self.SECTION
        _check(self.epochs > 0, f"{name}.epochs", "> 0", self.epochs)
        _check(self.save_every >= 0, f"{name}.save_every", ">= 0", self.save_every)
        _check(self.batch_size >= 1, f"{name}.batch_size", ">= 1", self.batch_size)
        _check(self.lr > 0, f"{name}.lr", "> 0", self.lr)
        _check(0 <= self.warmup_ratio < 1, f"{name}.warmup_ratio", "in [0, 1)", self.warmup_ratio)
        _check(self.max_steps >= 0, f"{name}.max_steps", ">= 0", self.max_steps)
        _check(self.log_every >= 1, f"{name}.log_every", ">= 1", self.log_every)


@dataclass(frozen=True)
class SFTConfig(SupervisedConfig):
    """Supervised fine-tuning (loss on response tokens only; cosine decay after warmup)."""

    SECTION: ClassVar[str] = "sft"

    max_length: int = 2048
    """Longest SFT sequence (prompt + response tokens, and never more than the model's positions); longer ones
    are cut at the end and counted (``sft/truncated``)."""

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, "sft.max_length", ">= 8", self.max_length)
        super().__post_init__()


@dataclass(frozen=True)
class RMConfig(SupervisedConfig):
    """Bradley-Terry reward-model training."""

    SECTION: ClassVar[str] = "rm"

    epochs: float = 2.0
    """Passes over the preference pairs."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    init_from: Optional[str] = None
    """Backbone checkpoint to start from. ``None``: the world's RM backbone, an SFT-trained LM
    (an RM trained from scratch never checks content)."""


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM generation backend (``rl.generator=vllm``): one colocated engine per process (docs/VLLM.md)."""

    gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM may take (weights + KV cache); the rest is left to training."""
    dtype: VLLMDType = VLLMDType.AUTO
    """Engine weights dtype: auto (the checkpoint's), float32, bfloat16 or float16."""
    enforce_eager: bool = False
    """Run the engine without CUDA graphs (slower decoding, less memory, faster start)."""
    max_model_len: int = 0
    """Longest sequence the engine holds; 0: data.max_prompt_tokens + rl.max_new_tokens (capped by the model)."""
    max_num_batched_tokens: int = 4096
    """Tokens the engine schedules per forward pass (vLLM's ``max_num_batched_tokens``; prefills longer than it are
    chunked). vLLM's own default (tens of thousands) makes its memory profiler reserve activations for that many
    tokens and leaves little KV cache in a colocated share; TRL sets 4096. 0: vLLM's default."""
    sleep_level: int = 2
    """Between rollouts the engine sleeps, freeing its GPU memory for training: 2 discards the weights and KV cache
    (the policy's weights are pushed at the wake-up anyway), 1 offloads the weights to CPU RAM (a host round trip of
    the whole model per step), 0 never sleeps (the engine keeps its share during training)."""
    tensor_parallel_size: int = 1
    """GPUs (processes) per engine: the processes form groups of this many consecutive ranks, each group one engine
    over the group's gathered prompts. Must divide the number of processes."""
    lora_adapter: bool = True
    """A LoRA policy's adapter goes to the engine as a vLLM LoRA adapter (the base weights only when the engine lost
    them); false, or an adapter vLLM cannot serve (DoRA, modules_to_save, several active adapters): the merged
    weights W + BA are pushed one tensor at a time."""

    def __post_init__(self) -> None:
        _check(0.0 < self.gpu_memory_utilization < 1.0, "vllm.gpu_memory_utilization", "in (0, 1)",
               self.gpu_memory_utilization)
        _check(self.max_model_len >= 0, "vllm.max_model_len", ">= 0", self.max_model_len)
        _check(self.max_num_batched_tokens >= 0, "vllm.max_num_batched_tokens", ">= 0", self.max_num_batched_tokens)
        _check(self.sleep_level in (0, 1, 2), "vllm.sleep_level", "0, 1 or 2", self.sleep_level)
        _check(self.tensor_parallel_size >= 1, "vllm.tensor_parallel_size", ">= 1", self.tensor_parallel_size)


GENERATORS = tuple(g.value for g in Generator)


@dataclass(frozen=True)
class RLConfig:
    """Policy-gradient RL with a frozen reference (R2M paper Section 2, Eq. 1-2)."""

    algorithm: Algorithm = Algorithm.RLOO
    """Advantage estimator: rloo, grpo, remax, reinforce_pp or ppo."""
    steps: int = 200
    """Policy steps T (one rollout batch each)."""
    prompts_per_step: int = 64
    """Prompts n per rollout batch."""
    k: int = 4
    """Samples K per prompt."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    max_new_tokens: int = 10
    """Longest response."""
    lr: float = 5e-6
    """Policy AdamW learning rate (the peak, under ``lr_schedule``)."""
    lr_schedule: LRSchedule = LRSchedule.CONSTANT
    """Policy learning-rate schedule over the RL steps: constant, linear (to 0 at rl.steps) or cosine (to 0)."""
    warmup_steps: int = 0
    """RL steps of linear warm-up from 0 to ``lr`` before the schedule (0: none)."""
    beta: float = 0.02
    """KL coefficient to the frozen reference (the initial one when ``kl_adaptive``)."""
    kl_adaptive: bool = False
    """Adapt beta towards ``kl_target`` (Ziegler et al.'s proportional controller)."""
    kl_target: float = 0.1
    """Target KL of the adaptive controller, in ``kl_target_level``'s units (SER's PPO: 0.1 per sequence, beta 0.2)."""
    kl_target_level: KLLevel = KLLevel.SEQUENCE
    """Units of ``kl_target`` and of the KL the controller reads: ``sequence`` (the batch's mean over responses of
    the summed per-token log-ratio, as TRL and SER state targets) or ``token`` (the batch's mean per-token log-ratio,
    the units of ``kl``, ``eval/kl`` and ``stop_at_kl``)."""
    kl_horizon: int = 10000
    """Horizon (in samples) of the adaptive controller (TRL's 10000), unless ``kl_horizon_batches`` is set."""
    kl_horizon_batches: float = 0.0
    """Horizon of the adaptive controller in steps' batches: horizon = this × prompts_per_step × k (the global
    batch), so β moves by at most 20%/this per step (10: ±2%) at any process count. 0: ``kl_horizon`` samples."""
    stop_at_kl: float = 0.0
    """Stop the run at the first evaluation (every ``eval_every`` steps) whose ``eval/kl`` (mean per-token log-ratio
    on the evaluation samples) is at least this, with ``steps`` as the cap; the result records which happened
    (``stop/kl_reached``, ``RLResult.stop_reason``). 0: train ``steps`` steps."""
    kl_estimator: KLEstimator = KLEstimator.K1
    """Per-token KL estimator: k1, k2 or k3."""
    kl_mode: KLMode = KLMode.REWARD
    """``reward``: subtract beta * sum_t KL_t from each sequence reward; ``loss``: add beta * KL to the loss."""
    clip_eps: float = 0.2
    """PPO-style ratio clip epsilon (the lower bound 1 - clip_eps, and the upper one unless ``clip_eps_high``)."""
    clip_eps_high: Optional[float] = None
    """Upper clip bound 1 + clip_eps_high (DAPO's clip-higher); None: clip_eps."""
    clip_ratio_c: Optional[float] = None
    """Dual-clip constant c > 1: for A < 0 the loss is capped at -A·c (Ye et al. 2020; verl, OpenRLHF); None: off."""
    ratio_level: RatioLevel = RatioLevel.TOKEN
    """``token``: ρ_t per token (PPO); ``sequence``: ρ = π_θ(y|x)/π_old(y|x) per sequence, as R2M's Eq. 2 states
    (needs a sequence-level advantage: rloo, grpo, dr_grpo, remax). The sequence loss is a mean over sequences."""
    epochs: int = 2
    """Optimisation epochs k over each rollout batch."""
    minibatches: int = 2
    """Optimiser steps per epoch (the batch is split into this many minibatches)."""
    micro_batch_size: int = 0
    """Sequences per forward pass inside a minibatch (gradient accumulation); 0: the whole minibatch."""
    rollout_batch_size: int = 0
    """Sequences per call in experience making (generation, pi_old/reference log-probs, values); 0: a
    process's whole share at once. Bounds rollout memory (full-vocabulary logits, R2M's states) at scale."""
    rollout_chunks: int = 0
    """Sample each step's prompts in this many equal chunks, each from a seed of (run.seed, step, chunk)
    alone; 0: one chunk per process (one process: its RNG stream; N processes: a seed of (run.seed, step,
    rank) each). With N processes a multiple of N makes the samples independent of N (a 2-process run
    reproduces the 1-process run)."""
    max_grad_norm: float = 1.0
    """Gradient clipping."""
    aggregation: LossAggregation = LossAggregation.TOKEN_MEAN
    """Reduction of the per-token loss."""
    gamma: float = 1.0
    """Discount of the token-level returns (reinforce_pp, ppo)."""
    lam: float = 0.95
    """GAE lambda (ppo)."""
    whiten_advantages: bool = True
    """Whiten token-level advantages over the batch (reinforce_pp, ppo)."""
    critic_init: CriticInit = CriticInit.POLICY
    """PPO critic backbone and head: ``policy`` (head zero) or ``reward`` (the RM, head copied; the critic
    reads the policy's tokens, so the RM must share the policy's tokenizer)."""
    critic_lr: float = 1e-5
    """PPO critic learning rate."""
    value_clip: float = 0.2
    """PPO value-loss clip range around the rollout values."""
    eval_every: int = 20
    """Evaluate on the fixed prompt set every this many steps (and at the first and last step)."""
    save_every: int = 0
    """Write a training checkpoint (everything needed to resume) every this many steps; 0: only on
    SIGINT/SIGTERM and numeric failure. The final policy is always saved to checkpoints/final."""
    generator: Generator = Generator.HF
    """Rollout generation backend: ``hf`` (transformers ``generate`` on the policy) or ``vllm`` (a colocated
    vLLM engine; needs ``pip install vllm`` and a CUDA GPU; docs/GENERATION.md). Evaluation always uses hf."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the vLLM engine (used when ``generator=vllm``)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Over-optimisation monitor: label-free signals at every evaluation and the alarm's thresholds
    (docs/MONITOR.md)."""
    stop_on_alarm: bool = False
    """Stop the run when the alarm fires, with a checkpoint; the policy of the evaluation before the alarm's onset
    is kept as checkpoints/best-before-alarm (a policy snapshot is saved at each evaluation while armed)."""
    old_logprobs: OldLogprobs = OldLogprobs.RECOMPUTE
    """pi_old's log-probs (and R2M's h): ``recompute`` (a second forward pass, the default) or
    ``generation`` (from generate's own logits and states, equal to ~1e-6; hf only; docs/GENERATION.md)."""
    optimizer_impl: OptimizerImpl = OptimizerImpl.AUTO
    """Policy/critic AdamW implementation: auto (torch's default), foreach or fused."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "rl.steps", ">= 1", self.steps)
        _check(self.old_logprobs == OldLogprobs.RECOMPUTE or self.generator == Generator.HF, "rl.old_logprobs",
               "recompute with rl.generator=vllm (r2m does not read vLLM's log-probs)", self.old_logprobs.value)
        _check(self.prompts_per_step >= 1, "rl.prompts_per_step", ">= 1", self.prompts_per_step)
        min_k = 2 if self.algorithm.grouped else 1
        _check(self.k >= min_k, "rl.k", f">= {min_k} for {self.algorithm.value}", self.k)
        _check(self.temperature > 0, "rl.temperature", "> 0", self.temperature)
        _check(self.max_new_tokens >= 1, "rl.max_new_tokens", ">= 1", self.max_new_tokens)
        _check(self.lr > 0, "rl.lr", "> 0", self.lr)
        _check(self.beta >= 0, "rl.beta", ">= 0", self.beta)
        _check(0 < self.clip_eps < 1, "rl.clip_eps", "in (0, 1)", self.clip_eps)
        _check(self.clip_eps_high is None or self.clip_eps_high > 0, "rl.clip_eps_high", "> 0 or null",
               self.clip_eps_high)
        _check(self.clip_ratio_c is None or self.clip_ratio_c > 1, "rl.clip_ratio_c", "> 1 or null", self.clip_ratio_c)
        _check(self.ratio_level == RatioLevel.TOKEN or self.algorithm.sequence_level, "rl.ratio_level",
               f"token for {self.algorithm.value} (its advantage is per token)", self.ratio_level.value)
        _check(self.warmup_steps >= 0, "rl.warmup_steps", ">= 0", self.warmup_steps)
        _check(self.warmup_steps < self.steps, "rl.warmup_steps",
               f"< rl.steps={self.steps} (the warm-up must end before the run does)", self.warmup_steps)
        _check(self.epochs >= 1, "rl.epochs", ">= 1", self.epochs)
        _check(self.minibatches >= 1, "rl.minibatches", ">= 1", self.minibatches)
        batch = self.prompts_per_step * self.k
        _check(batch % self.minibatches == 0, "rl.minibatches", f"a divisor of prompts_per_step*k={batch}",
               self.minibatches)
        _check(self.micro_batch_size >= 0, "rl.micro_batch_size", ">= 0", self.micro_batch_size)
        if self.micro_batch_size:
            mb = batch // self.minibatches
            _check(mb % self.micro_batch_size == 0, "rl.micro_batch_size", f"a divisor of the minibatch size {mb}",
                   self.micro_batch_size)
        _check(self.rollout_batch_size >= 0, "rl.rollout_batch_size", ">= 0", self.rollout_batch_size)
        _check(self.rollout_chunks >= 0, "rl.rollout_chunks", ">= 0", self.rollout_chunks)
        if self.rollout_chunks:
            _check(self.prompts_per_step % self.rollout_chunks == 0, "rl.rollout_chunks",
                   f"a divisor of rl.prompts_per_step={self.prompts_per_step}", self.rollout_chunks)
        _check(self.max_grad_norm > 0, "rl.max_grad_norm", "> 0", self.max_grad_norm)
        _check(self.eval_every >= 1, "rl.eval_every", ">= 1", self.eval_every)
        _check(self.kl_target > 0, "rl.kl_target", "> 0", self.kl_target)
        _check(self.kl_horizon >= 1, "rl.kl_horizon", ">= 1", self.kl_horizon)
        _check(self.kl_horizon_batches >= 0, "rl.kl_horizon_batches", ">= 0 (0: rl.kl_horizon samples)",
               self.kl_horizon_batches)
        _check(self.stop_at_kl >= 0, "rl.stop_at_kl", ">= 0 (0: no KL stop)", self.stop_at_kl)
        if self.kl_adaptive:  # beta <- beta * (1 + e * n / horizon), e >= -0.2, n = prompts_per_step * k samples
            if self.kl_horizon_batches > 0:
                _check(self.kl_horizon_batches > 0.2, "rl.kl_horizon_batches", "> 0.2 with rl.kl_adaptive=true (else "
                       "one update below the target takes beta to 0 or below)", self.kl_horizon_batches)
            else:
                _check(5 * self.kl_horizon > batch, "rl.kl_horizon", f"> prompts_per_step*k/5 = {batch / 5:g} with "
                       "rl.kl_adaptive=true (else one update below the target takes beta to 0 or below)",
                       self.kl_horizon)
        _check(0 <= self.gamma <= 1, "rl.gamma", "in [0, 1]", self.gamma)
        _check(0 <= self.lam <= 1, "rl.lam", "in [0, 1]", self.lam)
        _check(self.critic_lr > 0, "rl.critic_lr", "> 0", self.critic_lr)
        _check(self.value_clip > 0, "rl.value_clip", "> 0", self.value_clip)
        _check(self.save_every >= 0, "rl.save_every", ">= 0", self.save_every)
        _check(self.monitor.enabled or not self.stop_on_alarm, "rl.stop_on_alarm",
               "false when rl.monitor.enabled=false (the alarm reads the monitor's signals)", self.stop_on_alarm)
