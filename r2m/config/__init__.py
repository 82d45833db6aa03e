"""Typed, frozen configuration: one dataclass per part, YAML files plus ``a.b=c`` overrides.

Every field carries a docstring (the string literal under it). Values are validated in
``__post_init__`` and errors name the dotted field path. Configs are frozen: once parsed they are
never mutated; derive a new one with :func:`replace_path` instead.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml


from r2m.errors import ConfigError  # noqa: E402  (re-exported)
from r2m.config.paths import PathFormats, PathSplits, format_names  # noqa: E402,F401  (data sections)
from r2m.fileio import atomic_write_text, decode_lines


def _check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")


class Algorithm(str, enum.Enum):
    """Policy-gradient algorithm, i.e. the advantage estimator of the RL loop."""

    RLOO = "rloo"
    GRPO = "grpo"
    REMAX = "remax"
    REINFORCE_PP = "reinforce_pp"
    REINFORCE_PP_BASELINE = "reinforce_pp_baseline"
    """REINFORCE++ on scores minus their group's mean (OpenRLHF's reinforce_baseline); K >= 2."""
    DR_GRPO = "dr_grpo"
    """GRPO without the std scaling (Dr. GRPO); pair with aggregation=seq_mean_token_sum_norm."""
    PPO = "ppo"

    @property
    def grouped(self) -> bool:
        """Whether the advantage compares the K samples of a prompt (so K >= 2 is needed)."""
        return self in (Algorithm.RLOO, Algorithm.GRPO, Algorithm.DR_GRPO, Algorithm.REINFORCE_PP_BASELINE)

    @property
    def sequence_level(self) -> bool:
        """Whether the advantage is one number per sequence (broadcast over its tokens)."""
        return self in (Algorithm.RLOO, Algorithm.GRPO, Algorithm.DR_GRPO, Algorithm.REMAX)


class KLEstimator(str, enum.Enum):
    """Per-token estimator of KL(pi || pi_ref) (Schulman's k1/k2/k3)."""

    K1 = "k1"
    K2 = "k2"
    K3 = "k3"


class KLMode(str, enum.Enum):
    """Where the KL to the reference enters: subtracted from the reward, or added to the loss."""

    REWARD = "reward"
    LOSS = "loss"


class LossAggregation(str, enum.Enum):
    """How per-token policy-loss terms are reduced to a scalar."""

    TOKEN_MEAN = "token_mean"
    SEQ_MEAN_TOKEN_SUM = "seq_mean_token_sum"
    SEQ_MEAN_TOKEN_MEAN = "seq_mean_token_mean"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq_mean_token_sum_norm"
    """Σ_b Σ_t ℓ / (N_seq · T_max), T_max = rl.max_new_tokens: Dr. GRPO's constant normaliser (TRL's dr_grpo)."""


class RatioLevel(str, enum.Enum):
    """Where the importance ratio π_θ/π_old is formed and clipped."""

    TOKEN = "token"
    """Per token, ρ_t = π_θ(y_t|·)/π_old(y_t|·), clipped per token (PPO; TRL, OpenRLHF, verl)."""
    SEQUENCE = "sequence"
    """Per sequence, ρ = π_θ(y|x)/π_old(y|x) = exp Σ_t (log π_θ − log π_old), clipped per sequence (R2M Eq. 2)."""


class LRSchedule(str, enum.Enum):
    """Learning-rate schedule of the policy (over RL steps, after ``rl.warmup_steps`` of linear warm-up)."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


class FusionInit(str, enum.Enum):
    """Initialisation of R2M's cross-attention (docs/R2M.md, "Initialisation")."""

    RANDOM = "random"
    """PyTorch's default Linear init (the paper's "random"); its φ(Ĥ) is ~40× narrower than φ(H_last)."""
    ZERO = "zero"
    """W_o = 0: Ĥ = 0 at the start, so the RM starts as ω(t) × the vanilla RM."""
    MATCHED = "matched"
    """Random, then W_o rescaled on the first batch so that φ(Ĥ)'s within-group spread equals φ(H_last)'s."""


class RewardSource(str, enum.Enum):
    """Where the RL reward comes from."""

    MODEL = "model"
    """A learned (proxy) reward model, ``AutoModelForSequenceClassification`` with one label."""
    GOLD = "gold"
    """The gold-reward world's true reward: the ceiling (only valid on world prompts)."""


class R2MAblation(str, enum.Enum):
    """R2M ablations (R2M paper Tables 2 and 4)."""

    NONE = "none"
    """Full R2M."""
    FROZEN = "frozen"
    """R2M w/o Train: policy feedback in the scoring, but the RM is never updated."""
    NOISE = "noise"
    """R2M w/ Noise: h replaced by Gaussian noise with the same mean and variance."""
    NO_BT = "no_bt"
    """R2M w/o BT: alpha = 1 (GRE only)."""
    NO_GRE = "no_gre"
    """R2M w/o GRE: alpha = 0 (BT only)."""


class RewardBaseline(str, enum.Enum):
    """Reward-model baselines of the R2M paper (Table 2), as alternatives to R2M."""

    NONE = "none"
    """The reward model as loaded (vanilla, frozen) or R2M when ``reward.r2m.enabled``."""
    PRETRAINED_RM = "pretrained_rm"
    """Pretrained RM: the RM further trained offline with BT on preference pairs of the policy's prompts."""
    ITERATIVE_HEAD = "iterative_head"
    """Iterative RM-head: GREBT on the annotation-time scores after each step, updating the head only."""


class SERVariant(str, enum.Enum):
    """Which SER loop runs (docs/SER.md)."""

    PAPER = "paper"
    """Algorithm 1: learning status on the validation set, the Eq. 4 filter of that status, the Eq. 5 loss."""
    RELEASE = "release"
    """The authors' public scripts: no status, both filters joined by OR, log-sigmoid loss."""


class PairLoss(str, enum.Enum):
    """Pairwise loss of SER's retraining on self-labelled pairs."""

    HINGE = "hinge"
    """Eq. 5: max(0, margin - (sigmoid(r_c) - sigmoid(r_r))), on the sigmoid-normalised scores."""
    BT = "bt"
    """Log-sigmoid (Bradley-Terry): -log sigmoid(r_c - r_r), on the raw scores."""


class RetrainFrom(str, enum.Enum):
    """Which reward model each SER loop retrains."""

    CURRENT = "current"
    """The previous loop's RM (the RM keeps evolving)."""
    SEED = "seed"
    """The Loop-0 seed RM, every loop (only the self-labelled data carries over)."""


class RetrainData(str, enum.Enum):
    """What each SER loop retrains on."""

    FILTERED = "filtered"
    """The filtered self-labelled pairs only (Algorithm 1 as printed)."""
    FILTERED_PLUS_SEED = "filtered_plus_seed"
    """Those pairs plus the seed's human-labelled training pairs (D_val stays out)."""


class Calibration(str, enum.Enum):
    """How SER turns an RM's raw scores into the probabilities Eq. 2-4 threshold (docs/SER.md)."""

    SIGMOID = "sigmoid"
    """sigmoid(score): depends on the offset and spread BT leaves free (the behaviour before issue 12)."""
    MEDIAN = "median"
    """sigmoid(score - median of the D_val scores): offset-free, not spread-free."""
    PLATT = "platt"
    """sigmoid((score - median) / T), T fitted on the D_val pairs (Platt scaling): offset- and spread-free."""


class KeepLoop(str, enum.Enum):
    """Which loop's RM SER keeps (Table 1's SER row, the PPO stage's RM)."""

    LAST = "last"
    """The last completed loop (the paper's converged RM)."""
    BEST_VAL = "best_val"
    """The loop with the highest validation accuracy (the earliest on ties)."""


class PPOPrompts(str, enum.Enum):
    """Which prompts SER's PPO stage trains on."""

    SPLIT = "split"
    """The prompts of the PPO part of the preference data (SER Appendix D.1)."""
    WORLD = "world"
    """``data.prompts`` (the world's RL prompts by default)."""


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    """Run name; outputs go to ``<root>/<name>/``."""
    root: str = "runs"
    """Directory holding all run directories and the world cache."""
    seed: int = 0
    """Seed for python, numpy and torch."""
    device: str = "auto"
    """``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda``."""
    log_with: tuple[str, ...] = ("tensorboard",)
    """accelerate trackers to log to: any of ``tensorboard``, ``wandb``; empty for none."""
    progress: bool = True
    """Show a progress bar."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    resume: str = "never"
    """``auto``: continue from the latest complete checkpoint of this run, if any; ``never``: start fresh."""
    keep_checkpoints: int = 3
    """Keep the newest K training checkpoints (0 keeps all)."""
    max_bad_steps: int = 3
    """Stop (with a checkpoint) after this many consecutive steps with a NaN/inf reward, advantage or loss."""
    allow_unsafe_weights: bool = False
    """Allow pickle (.bin) weights. Off: only safetensors are loaded."""
    mixed_precision: str = "no"
    """accelerate autocast: ``no``, ``bf16``, ``fp16`` (CUDA only) or ``auto`` (bf16 where CUDA supports it, else
    fp16 on CUDA, else no). ``no`` defers to ``accelerate launch --mixed_precision`` (ACCELERATE_MIXED_PRECISION);
    any other value wins over the launcher."""

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "run.name", "a non-empty name without '/'", self.name)
        _check(self.device in ("auto", "cpu", "cuda"), "run.device", "one of auto, cpu, cuda", self.device)
        for t in self.log_with:
            _check(t in ("tensorboard", "wandb"), "run.log_with", "trackers among tensorboard, wandb", self.log_with)
        _check(self.threads >= 0, "run.threads", ">= 0", self.threads)
        _check(self.resume in ("never", "auto"), "run.resume", "never or auto", self.resume)
        _check(self.keep_checkpoints >= 0, "run.keep_checkpoints", ">= 0", self.keep_checkpoints)
        _check(self.max_bad_steps >= 1, "run.max_bad_steps", ">= 1", self.max_bad_steps)
        _check(self.mixed_precision in MIXED_PRECISIONS, "run.mixed_precision", "one of no, bf16, fp16, auto",
               self.mixed_precision)
        _check(not (self.device == "cpu" and self.mixed_precision == "fp16"), "run.mixed_precision",
               "no, bf16 or auto with run.device=cpu (fp16 autocast needs CUDA)", self.mixed_precision)


MIXED_PRECISIONS = ("no", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class MixtureConfig:
    """Shares of each kind of SFT demonstration in the gold-reward world (normalised to sum 1)."""

    correct: float = 0.33
    """The sorted digits, then ``<eos>``."""
    truncated: float = 0.35
    """Sorted, with 1-2 digits dropped (too short: the length shortcut a reward model can learn)."""
    swap: float = 0.15
    """Sorted, with one adjacent pair swapped."""
    unsorted: float = 0.10
    """The prompt digits copied unsorted."""
    random: float = 0.05
    """Random digits of the right length."""
    repeat: float = 0.02
    """Correct, plus 1-3 repeated digits at the end (too long)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            _check(v >= 0, f"world.mixture.{f.name}", ">= 0", v)
        _check(sum(self.weights()) > 0, "world.mixture", "a positive total", self.weights())

    def weights(self) -> list[float]:
        return [getattr(self, f.name) for f in fields(self)]

    def kinds(self) -> list[str]:
        return [f.name for f in fields(self)]


@dataclass(frozen=True)
class WorldConfig:
    """The gold-reward world: sort the digits, with a length-biased preference labeller."""

    min_digits: int = 3
    """Fewest digits in a prompt."""
    max_digits: int = 6
    """Most digits in a prompt."""
    n_sft: int = 30000
    """SFT demonstrations (mixed quality, see ``mixture``)."""
    n_pref_train: int = 5000
    """Preference pairs for reward-model training (after identical pairs are dropped)."""
    n_pref_eval: int = 1000
    """Held-out preference pairs."""
    n_rl_prompts: int = 20000
    """Prompts for RL training."""
    n_pref_policy: int = 5000
    """Preference pairs on the first RL prompts (the Pretrained-RM baseline trains on them)."""
    n_eval_prompts: int = 256
    """Fixed evaluation prompts (disjoint seed stream from the RL prompts)."""
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    """Quality mixture of the SFT demonstrations and of the preference-pair candidates."""
    tau: float = 0.25
    """Labeller temperature: P(a>b) = sigmoid((g_a - g_b)/tau + lambda*(len_a - len_b))."""
    length_bias: float = 1.0
    """Labeller length bias lambda, per token of length difference (1.5: the hack at once)."""
    extra_token_penalty: float = 0.25
    """Gold penalty per response token beyond n."""
    missing_eos_penalty: float = 0.5
    """Gold penalty when the response has no ``<eos>``."""
    seed: int = 1234
    """Seed of the world's data generator (independent of run.seed)."""

    def __post_init__(self) -> None:
        _check(1 <= self.min_digits <= self.max_digits, "world.min_digits", "1 <= min_digits <= max_digits", self.min_digits)
        _check(self.max_digits <= 16, "world.max_digits", "<= 16", self.max_digits)
        for name in ("n_sft", "n_pref_train", "n_pref_eval", "n_rl_prompts", "n_eval_prompts", "n_pref_policy"):
            _check(getattr(self, name) >= 1, f"world.{name}", ">= 1", getattr(self, name))
        _check(self.tau > 0, "world.tau", "> 0", self.tau)
        _check(self.extra_token_penalty >= 0, "world.extra_token_penalty", ">= 0", self.extra_token_penalty)
        _check(self.missing_eos_penalty >= 0, "world.missing_eos_penalty", ">= 0", self.missing_eos_penalty)


@dataclass(frozen=True)
class DataConfig:
    """Dataset paths (JSONL). ``None`` means: use the gold-reward world's generated file."""

    prompts: Optional[str] = None
    """RL prompts, one ``{"prompt": ...}`` per line."""
    eval_prompts: Optional[str] = None
    """Fixed evaluation prompts, same schema."""
    sft: Optional[str] = None
    """SFT demonstrations, ``{"prompt": ..., "response": ...}``."""
    pref_train: Optional[str] = None
    """Preference pairs, ``{"prompt": ..., "chosen": ..., "rejected": ...}``."""
    pref_eval: Optional[str] = None
    """Held-out preference pairs, same schema."""
    pref_policy: Optional[str] = None
    """Preference pairs on the RL prompts (Pretrained-RM baseline), same schema."""
    max_prompt_tokens: int = 64
    """Prompts longer than this (in policy tokens) are handled per ``overlong``."""
    overlong: str = "truncate"
    """``truncate`` (keep the last max_prompt_tokens tokens) or ``skip`` over-long prompts."""
    format: str = "plain"
    """Schema of the paths set here: plain (r2m JSONL), ultrafeedback, hh_rlhf, tldr, tldr_preference,
    stack_exchange or trl (TRL's standard and conversational formats; docs/DATA.md). Local JSONL/JSON/Parquet or
    a hub name. World files are always plain."""
    formats: PathFormats = field(default_factory=PathFormats)
    """Per-path formats (data.formats.pref_train=trl, ...) over data.format."""
    splits: PathSplits = field(default_factory=PathSplits)
    """Per-path splits (data.splits.pref_eval=validation, ...) over data.train_split / data.eval_split."""
    config: Optional[str] = None
    """Subset of the hub datasets (``load_dataset(name=...)``), e.g. a dataset's configuration name; None: default."""
    streaming: bool = False
    """Stream hub datasets (``load_dataset(streaming=True)``): rows are read as they arrive, nothing is prepared
    on disk first. The rows kept are still held in memory."""
    train_split: Optional[str] = None
    """Split read from a hub name for prompts, sft, pref_train and pref_policy; None: the format's default."""
    eval_split: Optional[str] = None
    """Split read from a hub name for eval_prompts and pref_eval; None: the format's default."""
    max_response_tokens: int = 0
    """Drop examples whose chosen response is longer, in policy tokens (R2M: 512 on UltraFeedback); 0 keeps all."""
    on_mismatch: str = "skip"
    """Rows a format cannot use (e.g. HH-RLHF pairs whose prompts differ): ``skip`` (counted) or ``error``."""

    def __post_init__(self) -> None:
        _check(self.max_prompt_tokens >= 1, "data.max_prompt_tokens", ">= 1", self.max_prompt_tokens)
        _check(self.overlong in ("truncate", "skip"), "data.overlong", "truncate or skip", self.overlong)
        formats = format_names()
        _check(self.format in formats, "data.format", f"one of {formats}", self.format)
        _check(self.max_response_tokens >= 0, "data.max_response_tokens", ">= 0", self.max_response_tokens)
        _check(self.on_mismatch in ("skip", "error"), "data.on_mismatch", "skip or error", self.on_mismatch)


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
    head (the LM head; an RM's score head trains fully instead)."""

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
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Allow custom model code from the checkpoint. Off unless asked for."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """RL trains LoRA adapters on the policy; the reference is the same base with the adapters off (no copy)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of the trained policy (and of PPO's critic): less memory,
    more compute, the same gradients."""

    def __post_init__(self) -> None:
        _check(self.dtype in ("float32", "bfloat16", "float16"), "policy.dtype", "float32, bfloat16 or float16", self.dtype)


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
    hidden_device: str = "same"
    """Where h is kept between rollout and RM update: ``same`` (the policy's device) or ``cpu``."""
    hidden_dtype: str = "float32"
    """dtype h is stored in: float32, bfloat16 or float16 (n*K*S*D_p values: see docs/R2M.md)."""
    backbone_dtype: str = "same"
    """Precision of the frozen RM backbone: ``same`` as reward.dtype, or bfloat16/float16."""

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
        _check(self.hidden_device in ("same", "cpu"), "reward.r2m.hidden_device", "same or cpu", self.hidden_device)
        _check(self.hidden_dtype in ("float32", "bfloat16", "float16"), "reward.r2m.hidden_dtype",
               "float32, bfloat16 or float16", self.hidden_dtype)
        _check(self.backbone_dtype in ("same", "float32", "bfloat16", "float16"), "reward.r2m.backbone_dtype",
               "same, float32, bfloat16 or float16", self.backbone_dtype)

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
    dtype: str = "float32"
    """Weights dtype of the reward model."""
    trust_remote_code: bool = False
    """Allow custom model code from the checkpoint. Off unless asked for."""
    scaling: str = "none"
    """Map of the raw score: ``none`` or ``sigmoid_centered`` (sigmoid(score) - 0.5, SER Appendix C.3)."""
    normalize: bool = False
    """Normalise rewards by running mean/std over the run before computing advantages."""
    clip: float = 0.0
    """Clip rewards to [-clip, clip] after normalisation; 0 disables."""
    r2m: R2MConfig = field(default_factory=R2MConfig)
    """R2M: the policy-feedback reward model and its online update."""
    baseline: RewardBaseline = RewardBaseline.NONE
    """A reward-model baseline instead of R2M: pretrained_rm or iterative_head."""
    pretrain_lr: float = 1e-4
    """pretrained_rm: learning rate of the offline BT training on the policy prompts' pairs."""
    pretrain_epochs: float = 2.0
    """pretrained_rm: epochs of that training."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA when a reward model is trained (``r2m rm``, SER's retraining unless ser.lora, pretrained_rm); the
    score head trains fully and the saved RM is merged. The world's own RM is always trained fully."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass when a reward model is trained (same gradients)."""
    max_length: int = 2048
    """Longest reward-model input (prompt + response in RM tokens, its chat template included); a longer
    input keeps its last tokens and is counted (``data/rm_truncated``). At least data.max_prompt_tokens +
    rl.max_new_tokens (checked)."""

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, "reward.max_length", ">= 8", self.max_length)
        _check(self.dtype in ("float32", "bfloat16", "float16"), "reward.dtype", "float32, bfloat16 or float16", self.dtype)
        _check(self.clip >= 0, "reward.clip", ">= 0", self.clip)
        _check(self.scaling in ("none", "sigmoid_centered"), "reward.scaling", "none or sigmoid_centered", self.scaling)
        _check(not (self.r2m.enabled and self.baseline != RewardBaseline.NONE), "reward.baseline",
               "none when reward.r2m.enabled (R2M and the baselines are alternatives)", self.baseline.value)
        needs_model = self.r2m.enabled or self.baseline != RewardBaseline.NONE
        _check(not (needs_model and self.source == RewardSource.GOLD), "reward.source",
               "model when R2M or an RM baseline is used", self.source.value)
        _check(self.pretrain_lr > 0, "reward.pretrain_lr", "> 0", self.pretrain_lr)
        _check(self.pretrain_epochs > 0, "reward.pretrain_epochs", "> 0", self.pretrain_epochs)


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (loss on response tokens only)."""

    epochs: float = 1.0
    """Passes over the demonstrations (fractions allowed)."""
    batch_size: int = 64
    """Sequences per optimiser step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine decay after warmup)."""
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
    max_length: int = 2048
    """Longest SFT sequence (prompt + response tokens, and never more than the model's positions); longer ones
    are cut at the end and counted (``sft/truncated``)."""

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, "sft.max_length", ">= 8", self.max_length)
        _check(self.epochs > 0, "sft.epochs", "> 0", self.epochs)
        _check(self.save_every >= 0, "sft.save_every", ">= 0", self.save_every)
        _check(self.batch_size >= 1, "sft.batch_size", ">= 1", self.batch_size)
        _check(self.lr > 0, "sft.lr", "> 0", self.lr)
        _check(0 <= self.warmup_ratio < 1, "sft.warmup_ratio", "in [0, 1)", self.warmup_ratio)
        _check(self.max_steps >= 0, "sft.max_steps", ">= 0", self.max_steps)
        _check(self.log_every >= 1, "sft.log_every", ">= 1", self.log_every)


@dataclass(frozen=True)
class RMConfig:
    """Bradley-Terry reward-model training."""

    init_from: Optional[str] = None
    """Backbone checkpoint to start from. ``None``: the world's RM backbone, an SFT-trained LM
    (an RM trained from scratch never checks content)."""
    epochs: float = 2.0
    """Passes over the preference pairs."""
    batch_size: int = 64
    """Pairs per optimiser step."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
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
        _check(self.epochs > 0, "rm.epochs", "> 0", self.epochs)
        _check(self.save_every >= 0, "rm.save_every", ">= 0", self.save_every)
        _check(self.batch_size >= 1, "rm.batch_size", ">= 1", self.batch_size)
        _check(self.lr > 0, "rm.lr", "> 0", self.lr)
        _check(0 <= self.warmup_ratio < 1, "rm.warmup_ratio", "in [0, 1)", self.warmup_ratio)
        _check(self.max_steps >= 0, "rm.max_steps", ">= 0", self.max_steps)
        _check(self.log_every >= 1, "rm.log_every", ">= 1", self.log_every)


@dataclass(frozen=True)
class VLLMConfig:
    """The vLLM generation backend (``rl.generator=vllm``): a colocated engine, weights synced after each step."""

    gpu_memory_utilization: float = 0.3
    """Share of the GPU's memory vLLM may take (weights + KV cache); the rest is left to training."""
    dtype: str = "auto"
    """Engine weights dtype: auto (the checkpoint's), float32, bfloat16 or float16."""
    enforce_eager: bool = False
    """Run the engine without CUDA graphs (slower decoding, less memory, faster start)."""
    max_model_len: int = 0
    """Longest sequence the engine holds; 0: data.max_prompt_tokens + rl.max_new_tokens (capped by the model)."""
    per_request_seed: bool = True
    """Give every request a seed drawn from torch's RNG (saved in checkpoints): a run and its resumption
    sample the same stream. false: only vLLM's engine RNG, seeded once with run.seed."""
    enable_sleep_mode: bool = False
    """Put the engine to sleep (level 1: weights to CPU, KV cache freed) between rollouts; weights are
    pushed on wake-up. Frees the engine's GPU memory for training at the cost of a copy per step."""

    def __post_init__(self) -> None:
        _check(0.0 < self.gpu_memory_utilization < 1.0, "vllm.gpu_memory_utilization", "in (0, 1)",
               self.gpu_memory_utilization)
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "vllm.dtype",
               "auto, float32, bfloat16 or float16", self.dtype)
        _check(self.max_model_len >= 0, "vllm.max_model_len", ">= 0", self.max_model_len)


GENERATORS = ("hf", "vllm")


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
    """Target sequence-level KL (sum over tokens) of the adaptive controller (SER's PPO: 0.1, beta 0.2)."""
    kl_horizon: int = 10000
    """Horizon (in samples) of the adaptive controller."""
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
    critic_init: str = "policy"
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
    generator: str = "hf"
    """Rollout generation backend: ``hf`` (transformers ``generate`` on the policy) or ``vllm`` (a colocated
    vLLM engine; needs ``pip install vllm`` and a CUDA GPU; docs/GENERATION.md). Evaluation always uses hf."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Settings of the vLLM engine (used when ``generator=vllm``)."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "rl.steps", ">= 1", self.steps)
        _check(self.generator in GENERATORS, "rl.generator", "hf or vllm", self.generator)
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
        _check(self.epochs >= 1, "rl.epochs", ">= 1", self.epochs)
        _check(self.minibatches >= 1, "rl.minibatches", ">= 1", self.minibatches)
        batch = self.prompts_per_step * self.k
        _check(batch % self.minibatches == 0, "rl.minibatches", f"a divisor of prompts_per_step*k={batch}", self.minibatches)
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
        _check(0 <= self.gamma <= 1, "rl.gamma", "in [0, 1]", self.gamma)
        _check(0 <= self.lam <= 1, "rl.lam", "in [0, 1]", self.lam)
        _check(self.critic_init in ("reward", "policy"), "rl.critic_init", "reward or policy", self.critic_init)
        _check(self.critic_lr > 0, "rl.critic_lr", "> 0", self.critic_lr)
        _check(self.value_clip > 0, "rl.value_clip", "> 0", self.value_clip)
        _check(self.save_every >= 0, "rl.save_every", ">= 0", self.save_every)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class JudgeConfig:
    """The API judge of ``r2m eval winrate --judge api`` (docs/EVAL.md): any OpenAI-compatible endpoint.

    Holds no secret: the key stays in the environment variable named by ``api_key_env`` (or in
    ``api_key_file``). A field left null falls back to its ``R2M_JUDGE_*`` environment variable, then to
    the default given in its docstring; a value set here (YAML or ``eval.judge.x=...``) wins over both.
    """

    base_url: Optional[str] = None
    """API root; requests go to <base_url>/chat/completions. Null: $R2M_JUDGE_BASE_URL,
    else https://api.openai.com/v1."""
    model: Optional[str] = None
    """Judge model. Null: $R2M_JUDGE_MODEL, else gpt-4o-2024-08-06 (SER's judge)."""
    api_key_env: Optional[str] = None
    """The NAME of the environment variable holding the API key, never the key itself.
    Null: $R2M_JUDGE_KEY_ENV, else OPENAI_API_KEY."""
    api_key_file: Optional[str] = None
    """A file whose stripped content is the key; wins over api_key_env. Null: $R2M_JUDGE_KEY_FILE, else unused."""
    mode: Optional[str] = None
    """``pairwise`` (both orders, inconsistent = tie) or ``single`` (SER's 5-point rubric per response).
    Null: $R2M_JUDGE_MODE, else pairwise."""
    concurrency: Optional[int] = None
    """Most requests in flight at once. Null: $R2M_JUDGE_CONCURRENCY, else 4."""
    max_retries: Optional[int] = None
    """Retries after the first attempt (HTTP 429, 5xx, timeouts, connection errors).
    Null: $R2M_JUDGE_MAX_RETRIES, else 5."""
    timeout: Optional[float] = None
    """Socket timeout of one request, seconds. Null: $R2M_JUDGE_TIMEOUT, else 60."""
    cache_dir: Optional[str] = None
    """Reply cache directory; "" disables the cache. Null: $R2M_JUDGE_CACHE, else .r2m_judge_cache."""

    def __post_init__(self) -> None:
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # Never echo the value: a key pasted here by mistake must not reach logs or error messages.
            raise ConfigError("eval.judge.api_key_env: expected the NAME of an environment variable "
                              "(letters, digits, _), not a key; the given value is not shown")
        if self.base_url is not None:
            _check(self.base_url.startswith(("http://", "https://")), "eval.judge.base_url", "an http(s) URL",
                   self.base_url)
        _check(self.mode in (None, "pairwise", "single"), "eval.judge.mode", "pairwise or single", self.mode)
        _check(self.concurrency is None or self.concurrency >= 1, "eval.judge.concurrency", ">= 1", self.concurrency)
        _check(self.max_retries is None or self.max_retries >= 0, "eval.judge.max_retries", ">= 0", self.max_retries)
        _check(self.timeout is None or self.timeout > 0, "eval.judge.timeout", "> 0", self.timeout)


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation on the fixed prompt set."""

    temperature: float = 1.0
    """Sampling temperature for evaluation; 0 means greedy."""
    seed: int = 4321
    """Seed of the evaluation sampler (the training RNG is left untouched)."""
    samples_per_prompt: int = 2
    """Samples per evaluation prompt (more: less noise)."""
    batch_size: int = 256
    """Prompts per generation batch."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The API judge of ``r2m eval winrate --judge api`` (endpoint, model, key variable, limits, cache)."""

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "eval.temperature", ">= 0", self.temperature)
        _check(self.samples_per_prompt >= 1, "eval.samples_per_prompt", ">= 1", self.samples_per_prompt)
        _check(self.batch_size >= 1, "eval.batch_size", ">= 1", self.batch_size)


@dataclass(frozen=True)
class DemoConfig:
    """What ``r2m demo`` runs after building the world."""

    arms: tuple[str, ...] = ("rloo", "r2m")
    """RL arms to run side by side: ``rloo`` (frozen proxy RM), ``r2m`` (RLOO+R2M), ``gold`` (the ceiling)."""

    def __post_init__(self) -> None:
        for a in self.arms:
            _check(a in DEMO_ARMS, "demo.arms", f"arms among {sorted(DEMO_ARMS)}", self.arms)


DEMO_ARMS = frozenset({"rloo", "r2m", "gold"})


@dataclass(frozen=True)
class SERConfig:
    """SER, Self-Evolved Reward Learning (SER paper, arXiv 2411.00418): ``r2m ser`` (docs/SER.md)."""

    variant: SERVariant = SERVariant.PAPER
    """``paper`` (Algorithm 1) or ``release`` (the public scripts: no status, OR of both filters, log-sigmoid)."""
    sft_frac: float = 0.3
    """Share of data.pref_train in the SFT part (SER App. D.1: SFT:RM:PPO = 0.3:0.65:0.05). In the world the
    world's SFT policy is used; this part is only written out (splits/sft.jsonl, its chosen responses)."""
    rm_frac: float = 0.65
    """Share in the RM part: the labelled seed (with the validation set) and the unlabelled pool."""
    ppo_frac: float = 0.05
    """Share in the PPO part, whose prompts PPO trains on (``ppo_prompts=split``)."""
    seed_frac: float = 0.15
    """Share of the RM part that keeps its labels (SER: 15%); the rest becomes unlabelled answer pairs."""
    val_frac: float = 0.2
    """Share of the labelled seed held out as the validation set D_val (learning status, validation accuracy)."""
    val_size: int = 0
    """Validation pairs taken from the labelled seed; 0: use val_frac."""
    tau_high: float = 0.55
    """tau_high: a sigmoid score above it is a confident "good" (Eq. 3-4)."""
    tau_low: float = 0.45
    """tau_low: a sigmoid score below it is a confident "bad" (Eq. 3-4)."""
    tau_delta: float = 0.3
    """tau_Delta: Status 2 when the validation mean |p1 - p2| (Eq. 2) reaches it."""
    delta: Optional[float] = None
    """delta of the Status-2 filter |s1 - s2| > delta (Eq. 4); ``None``: tau_delta."""
    min_status1: int = 10
    """Status 1 needs at least this many validation pairs with p_chosen > tau_high and p_rejected < tau_low."""
    marginal_gain: float = 0.01
    """A Status-1 loop whose validation accuracy rose by at most this much was marginal: the next loop shifts
    to Status 2 (SER Sec. 3.1). Accuracy as a fraction (0.01: one point)."""
    calibration: Calibration = Calibration.PLATT
    """Scores -> probabilities for Eq. 2-4: ``platt`` (median-centred, temperature fitted on D_val), ``median``
    or ``sigmoid`` (raw sigmoid, the behaviour before issue 12)."""
    loss: PairLoss = PairLoss.HINGE
    """Pairwise loss of every RM of the run (Loop 0, the loops, Full): ``hinge`` (Eq. 5) or ``bt`` (log-sigmoid).
    ``release`` always uses bt."""
    seed_steps: int = 50
    """Optimiser steps of the seed RM (Loop 0), of rm.batch_size pairs each; 0: rm.epochs passes over the seed."""
    retrain_data: RetrainData = RetrainData.FILTERED
    """``filtered``: each loop retrains on its filtered self-labelled pairs; ``filtered_plus_seed``: plus the
    seed's human-labelled training pairs."""
    keep: KeepLoop = KeepLoop.LAST
    """Which loop's RM is SER's result: ``last`` or ``best_val`` (highest validation accuracy)."""
    margin: float = 0.5
    """Delta of the Eq. 5 hinge, on sigmoid scores in (0, 1) (the paper gives no value; see docs/SER.md)."""
    retrain_from: RetrainFrom = RetrainFrom.CURRENT
    """``current``: each loop continues from the previous RM; ``seed``: each loop restarts from the Loop-0 RM."""
    max_loops: int = 3
    """Most self-labelling loops after Loop 0 (0: the seed RM only)."""
    lora: bool = False
    """Train every RM (seed, loops, Full) through LoRA adapters (merged into the saved RM) instead of fully."""
    lora_r: int = 8
    """LoRA rank (SER App. C.3: 8)."""
    lora_alpha: int = 32
    """LoRA alpha (SER: 32)."""
    lora_dropout: float = 0.1
    """LoRA dropout (SER: 0.1)."""
    ppo: bool = True
    """After the loop, train the policy with PPO against the evolved RM."""
    ppo_steps: int = 100
    """PPO policy steps (rl.steps of that stage)."""
    ppo_prompts: PPOPrompts = PPOPrompts.SPLIT
    """``split``: the PPO part's prompts; ``world``: data.prompts."""
    ppo_beta: float = 0.2
    """Initial KL coefficient of the PPO stage (SER App. C.3: 0.2)."""
    ppo_kl_adaptive: bool = True
    """Adaptive KL controller in the PPO stage (SER: adaptive)."""
    ppo_kl_target: float = 0.1
    """Target sequence KL of that controller (SER: 0.1)."""

    def __post_init__(self) -> None:
        for name in ("sft_frac", "rm_frac", "ppo_frac"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"ser.{name}", "in [0, 1]", getattr(self, name))
        total = self.sft_frac + self.rm_frac + self.ppo_frac
        _check(abs(total - 1.0) < 1e-6, "ser.rm_frac", "sft_frac + rm_frac + ppo_frac = 1", total)
        _check(self.rm_frac > 0, "ser.rm_frac", "> 0", self.rm_frac)
        _check(0.0 < self.seed_frac < 1.0, "ser.seed_frac", "in (0, 1) (some pairs must stay unlabelled)",
               self.seed_frac)
        _check(0.0 < self.val_frac < 1.0, "ser.val_frac", "in (0, 1)", self.val_frac)
        _check(self.val_size >= 0, "ser.val_size", ">= 0", self.val_size)
        _check(0.0 < self.tau_low <= self.tau_high < 1.0, "ser.tau_low", "0 < tau_low <= tau_high < 1", self.tau_low)
        _check(0.0 < self.tau_delta < 1.0, "ser.tau_delta", "in (0, 1)", self.tau_delta)
        _check(self.delta is None or 0.0 <= self.delta < 1.0, "ser.delta", "null or in [0, 1)", self.delta)
        _check(self.min_status1 >= 1, "ser.min_status1", ">= 1", self.min_status1)
        _check(-1.0 <= self.marginal_gain <= 1.0, "ser.marginal_gain", "in [-1, 1]", self.marginal_gain)
        _check(self.seed_steps >= 0, "ser.seed_steps", ">= 0", self.seed_steps)
        _check(0.0 < self.margin <= 1.0, "ser.margin", "in (0, 1] (sigmoid scores differ by at most 1)", self.margin)
        _check(self.max_loops >= 0, "ser.max_loops", ">= 0", self.max_loops)
        _check(self.lora_r >= 1, "ser.lora_r", ">= 1", self.lora_r)
        _check(self.lora_alpha >= 1, "ser.lora_alpha", ">= 1", self.lora_alpha)
        _check(0.0 <= self.lora_dropout < 1.0, "ser.lora_dropout", "in [0, 1)", self.lora_dropout)
        _check(self.ppo_steps >= 1, "ser.ppo_steps", ">= 1", self.ppo_steps)
        _check(not (self.ppo and self.ppo_prompts == PPOPrompts.SPLIT and self.ppo_frac == 0), "ser.ppo_frac",
               "> 0 when ser.ppo and ser.ppo_prompts=split", self.ppo_frac)
        _check(self.ppo_beta >= 0, "ser.ppo_beta", ">= 0", self.ppo_beta)
        _check(self.ppo_kl_target > 0, "ser.ppo_kl_target", "> 0", self.ppo_kl_target)

    @property
    def filter_delta(self) -> float:
        """delta of the Status-2 (and release) filter."""
        return self.tau_delta if self.delta is None else self.delta

    @property
    def retrain_loss(self) -> PairLoss:
        """The loss of every RM of the run (Loop 0, loops, Full): ``ser.loss``; the release scripts use log-sigmoid."""
        return PairLoss.BT if self.variant == SERVariant.RELEASE else self.loss


@dataclass(frozen=True)
class Config:
    """The whole configuration. Every subcommand reads the parts it needs."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run name, output root, seed, device and trackers."""
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


# --------------------------------------------------------------------------------------------
# Building from dicts / YAML / overrides
# --------------------------------------------------------------------------------------------


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, or raise a ConfigError naming ``name``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, name)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        _check(isinstance(value, dict), name, "a mapping", value)
        return _build(tp, value, name)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value.value if isinstance(value, enum.Enum) else value)
        except ValueError:
            raise ConfigError(f"{name}: expected one of {[m.value for m in tp]}, got {value!r}") from None
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        _check(isinstance(value, (list, tuple)), name, "a list", value)
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        _check(isinstance(value, bool), name, "true or false", value)
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
        return float(value)
    if tp is str:
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), name, "a string", value)
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key; valid keys here are {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            where = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        # Nested validators name their own section ("arch.hidden_size"); prefix the full path.
        if prefix and not msg.startswith(prefix + "."):
            head = prefix.rsplit(".", 1)[-1]
            msg = f"{prefix}.{msg[len(head) + 1:]}" if msg.startswith(head + ".") else f"{prefix}: {msg}"
        raise ConfigError(msg) from None


def to_dict(cfg: Any) -> Any:
    """Plain-python (YAML-safe) view of a config."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, enum.Enum):
        return cfg.value
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=c`` -> ("a.b", yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    return key, (yaml.safe_load(raw) if raw.strip() else "")


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: Optional[str | Path] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the world default when ``path`` is None) and apply overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p}: not found")

        text = "\n".join(decode_lines(p, p.read_bytes()))
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p}: invalid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    for ov in overrides:
        key, value = parse_override(ov)
        _set_path(data, key, value)
    try:
        return _build(Config, data)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def replace_path(cfg: Config, **dotted: Any) -> Config:
    """A new config with ``section__key=value`` replaced (``run__name="x"``). The original is untouched."""
    data = to_dict(cfg)
    for k, v in dotted.items():
        _set_path(data, k.replace("__", "."), to_dict(v))
    return _build(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# Fields that change how a training is logged or checkpointed, never what it produces: they do not
# enter the cache keys of artifacts, so adding or changing one never rebuilds the world's models.
# gradient_checkpointing recomputes the same activations: it changes memory and time, not the result.
NON_SEMANTIC = frozenset({"save_every", "log_every", "eval_every", "progress", "log_with", "keep_checkpoints",
                          "resume", "threads", "gradient_checkpointing"})
# Fields added after artifacts were cached, left out of the keys at the value that reproduces the old behaviour,
# so that existing caches stay valid (sft.max_length=2048 cuts nothing the old 512 did not on the world's data).
KEY_NEUTRAL = {"max_length": 2048}


def _semantic(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _semantic(v) for k, v in d.items()
                if k not in NON_SEMANTIC and not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}
    return d


def config_hash(*parts: Any) -> str:
    """Stable short hash of config parts (for caching world artifacts); logging/checkpoint fields excluded."""
    blob = json.dumps([_semantic(to_dict(p)) for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings of a config dataclass (the string literal under each field)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in zip(body, body[1:]):
        if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            docs[prev.target.id] = node.value.value.strip()
    return docs
