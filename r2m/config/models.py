"""The ``policy`` and ``reward`` sections (architecture, LoRA, R2M)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from r2m.config.checks import _check
from r2m.config.enums import BackboneDType, DType, HiddenDevice, HiddenDType, Scaling
from r2m.config.enums import FusionInit, PairChoice, R2MAblation, RewardBaseline, RewardSource


@dataclass(frozen=True)
class ArchConfig:
    """Size of a Llama model built from a config (the world's own models)."""

    hidden_size: int = 128
    """Width D."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (must divide hidden_size)."""
    intermediate_size: int = 256
    """MLP width."""
    max_positions: int = 64
    """Longest sequence the model accepts."""

    def __post_init__(self) -> None:
        _check(self.hidden_size >= 8, "arch.hidden_size", ">= 8", self.hidden_size)
        _check(self.num_layers >= 1, "arch.num_layers", ">= 1", self.num_layers)
        _check(self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "arch.num_heads",
               "a divisor of hidden_size", self.num_heads)
        _check(self.intermediate_size >= 1, "arch.intermediate_size", ">= 1", self.intermediate_size)
        _check(self.max_positions >= 8, "arch.max_positions", ">= 8", self.max_positions)


PEFT_DEFAULT_TARGETS = "peft-default"
"""``target_modules: [peft-default]``: the modules ``peft`` itself targets for the architecture."""


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA adapters through ``peft``: only the low-rank matrices (and an RM's score head) train."""

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""
    r: int = 16
    """Rank of the adapters."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / r) * B A."""
    dropout: float = 0.05
    """Dropout on the adapters' input (active in train mode only)."""
    target_modules: tuple[str, ...] = ("all-linear",)
    """Module names to adapt (``q_proj``, ``v_proj``, ...), or ``all-linear``: every linear layer but the output
    head (the LM head; an RM's score head trains fully instead), or ``peft-default``: ``peft``'s own choice for the
    architecture (``q_proj``, ``v_proj`` on Llama)."""

    def __post_init__(self) -> None:
        _check(self.r >= 1, "lora.r", ">= 1", self.r)
        _check(self.alpha > 0, "lora.alpha", "> 0", self.alpha)
        _check(0.0 <= self.dropout < 1.0, "lora.dropout", "in [0, 1)", self.dropout)
        _check(len(self.target_modules) > 0 and all(self.target_modules), "lora.target_modules",
               "a non-empty list of module names (or [all-linear])", self.target_modules)


@dataclass(frozen=True)
class PolicyConfig:
    """The policy: any ``AutoModelForCausalLM`` (path or hub name), or the world's SFT model."""

    path: Optional[str] = None
    """Checkpoint directory or hub name. ``None``: the world's SFT policy (built on demand)."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    """Size of the world's policy when it is built here."""
    dtype: DType = DType.FLOAT32
    """Weights dtype: float32, bfloat16 or float16. The frozen reference (and a LoRA policy's base) stays in it;
    the weights that train (the policy, PPO's critic, SFT) are kept as float32 master weights, as verl and
    DeepSpeed/FSDP do, because AdamW on 16-bit weights rounds updates of ~1e-6 away; their forward and backward
    run under ``run.mixed_precision``'s autocast (set bf16 for 16-bit compute). Logged at start. Under DeepSpeed,
    whose optimiser keeps fp32 masters itself, the weights are left as loaded. Saved checkpoints hold the
    float32 masters."""
    trust_remote_code: bool = False
    """Allow custom model code from the checkpoint. Off unless asked for."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """RL trains LoRA adapters on the policy; the reference is the same base with the adapters off (no copy)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of the trained policy (and of PPO's critic): less memory,
    more compute, the same gradients."""


@dataclass(frozen=True)
class R2MConfig:
    """R2M: policy-feedback fusion in the RM and its online GREBT update (R2M paper Section 4)."""

    enabled: bool = False
    """Score with policy feedback and update the fusion module and head after every policy step."""
    ablation: R2MAblation = R2MAblation.NONE
    """none, frozen (w/o Train), noise (w/ Noise), no_bt (alpha=1) or no_gre (alpha=0)."""
    inner_dim: int = 64
    """Internal width d of the cross-attention (the paper uses 2048 for 8B models)."""
    num_heads: int = 1
    """Attention heads of the cross-attention (the paper: 1)."""
    init: FusionInit = FusionInit.RANDOM
    """``random`` (as in the paper), ``zero`` (W_o = 0: at t=0 the RM equals the vanilla RM) or ``matched``
    (random, W_o rescaled on the first batch so that φ(Ĥ) has φ(H_last)'s within-group spread)."""
    omega_floor: float = 0.6
    """Omega: the floor of the weight omega(t) on the RM's own reward-token embedding."""
    alpha: float = 0.3
    """GRE weight in L_GREBT = (1-alpha) L_BT + alpha L_GRE."""
    lr: float = 1e-4
    """Learning rate of the fusion module and head (paper: 1e-6 dialogue, 5e-7 TL;DR for 8B RMs). In
    the world, 1e-3 diverges: the self-labelled GREBT update inflates the reward scale without bound."""
    weight_decay: float = 0.0
    """AdamW weight decay of the RM update."""
    updates_per_step: int = 1
    """RM optimiser steps after each policy step."""
    max_grad_norm: float = 1.0
    """Gradient clipping of the RM update."""
    gre_eps: float = 1e-6
    """eps added to the group's population std in GRE."""
    hidden_device: HiddenDevice = HiddenDevice.SAME
    """Where h is kept between rollout and RM update: ``same`` (the policy's device) or ``cpu`` (moved there a
    log-prob chunk at a time, and back a fusion chunk at a time)."""
    hidden_dtype: HiddenDType = HiddenDType.POLICY
    """dtype h is stored in: ``policy`` (the dtype the policy computes in), float32, bfloat16 or float16
    (n*K*S*D_p values: see docs/R2M.md)."""
    fusion_batch_size: int = 64
    """Rows per chunk of the fusion passes over a step's batch: annotation, the GREBT update (whole groups of
    rl.k, at least one; gradients accumulate over chunks, so the update is the whole batch's), its statistics.
    The fusion reads each chunk's h in float32: this bounds that copy and what its backward keeps."""
    backbone_dtype: BackboneDType = BackboneDType.SAME
    """Precision of the frozen RM backbone: ``same`` as reward.dtype, or bfloat16/float16."""
    pair_choice: PairChoice = PairChoice.SELF
    """Winner/loser of each group in L_BT: ``self`` (the paper), ``gold`` (oracle control) or ``random`` (control)."""

    def __post_init__(self) -> None:
        _check(self.inner_dim >= 1, "reward.r2m.inner_dim", ">= 1", self.inner_dim)
        _check(self.num_heads >= 1 and self.inner_dim % self.num_heads == 0, "reward.r2m.num_heads",
               "a divisor of inner_dim", self.num_heads)
        _check(0.0 <= self.omega_floor <= 1.0, "reward.r2m.omega_floor", "in [0, 1]", self.omega_floor)
        _check(0.0 <= self.alpha <= 1.0, "reward.r2m.alpha", "in [0, 1]", self.alpha)
        _check(self.lr > 0, "reward.r2m.lr", "> 0", self.lr)
        _check(self.updates_per_step >= 0, "reward.r2m.updates_per_step", ">= 0", self.updates_per_step)
        _check(self.max_grad_norm > 0, "reward.r2m.max_grad_norm", "> 0", self.max_grad_norm)
        _check(self.gre_eps > 0, "reward.r2m.gre_eps", "> 0", self.gre_eps)
        _check(self.fusion_batch_size >= 1, "reward.r2m.fusion_batch_size", ">= 1", self.fusion_batch_size)

    @property
    def effective_alpha(self) -> float:
        """alpha after the no_bt / no_gre ablations."""
        return {R2MAblation.NO_BT: 1.0, R2MAblation.NO_GRE: 0.0}.get(self.ablation, self.alpha)

    @property
    def trains(self) -> bool:
        return self.ablation != R2MAblation.FROZEN and self.updates_per_step > 0


@dataclass(frozen=True)
class RewardConfig:
    """The reward used by RL: a learned reward model (proxy) or the world's gold reward."""

    source: RewardSource = RewardSource.MODEL
    """``model`` (a proxy RM) or ``gold`` (the world's true reward; the ceiling)."""
    path: Optional[str] = None
    """RM checkpoint (``AutoModelForSequenceClassification``, num_labels=1). ``None``: the world's RM."""
    arch: ArchConfig = field(default_factory=lambda: ArchConfig(hidden_size=96, num_heads=4, intermediate_size=192))
    """Size of the world's RM backbone (deliberately another width than the policy)."""
    dtype: DType = DType.FLOAT32
    """Weights dtype of the reward model. Frozen (RL's RM backbone) it stays in it; trained (``r2m rm``, SER's RMs,
    R2M's head and fusion) the trainable weights are float32 masters, as for ``policy.dtype``."""
    trust_remote_code: bool = False
    """Allow custom model code from the checkpoint. Off unless asked for."""
    scaling: Scaling = Scaling.NONE
    """Map of the raw score: ``none`` or ``sigmoid_centered`` (sigmoid(score) - 0.5, SER Appendix C.3)."""
    normalize: bool = False
    """Normalise rewards by running mean/std over the run before computing advantages."""
    clip: float = 0.0
    """Clip rewards to [-clip, clip] after normalisation; 0 disables."""
    r2m: R2MConfig = field(default_factory=R2MConfig)
    """R2M: the policy-feedback reward model and its online update."""
    baseline: RewardBaseline = RewardBaseline.NONE
    """A reward-model baseline instead of R2M: pretrained_rm, iterative_head or scale_control (vanilla × ω(t))."""
    pretrain_lr: float = 1e-4
    """pretrained_rm: learning rate of the offline BT training on the policy prompts' pairs."""
    pretrain_epochs: float = 2.0
    """pretrained_rm: epochs of that training."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA when a reward model is trained (``r2m rm``, SER's retraining unless ser.lora.enabled, pretrained_rm); the
    score head trains fully and the saved RM is merged. The world's own RM is always trained fully."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass when a reward model is trained (same gradients)."""
    batch_size: int = 32
    """Rows per reward-model forward (RL scoring, R2M's annotation, Table 3 and its policy h pass), rows of similar
    length together; memory only: the scores do not depend on it beyond float rounding."""
    max_length: int = 2048
    """Longest reward-model input (prompt + response in RM tokens, its chat template included); a longer
    input keeps its last tokens and is counted (``data/rm_truncated``). At least data.max_prompt_tokens +
    rl.max_new_tokens (checked)."""

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, "reward.max_length", ">= 8", self.max_length)
        _check(self.batch_size >= 1, "reward.batch_size", ">= 1", self.batch_size)
        _check(self.clip >= 0, "reward.clip", ">= 0", self.clip)
        _check(not (self.r2m.enabled and self.baseline != RewardBaseline.NONE), "reward.baseline",
               "none when reward.r2m.enabled (R2M and the baselines are alternatives)", self.baseline.value)
        needs_model = self.r2m.enabled or self.baseline != RewardBaseline.NONE
        _check(not (needs_model and self.source == RewardSource.GOLD), "reward.source",
               "model when R2M or an RM baseline is used", self.source.value)
        _check(self.pretrain_lr > 0, "reward.pretrain_lr", "> 0", self.pretrain_lr)
        _check(self.pretrain_epochs > 0, "reward.pretrain_epochs", "> 0", self.pretrain_epochs)
