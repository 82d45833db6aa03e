"""The ``eval``, ``demo`` and ``ser`` sections."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from r2m.errors import ConfigError
from r2m.config.checks import _check
from r2m.config.models import PEFT_DEFAULT_TARGETS, LoRAConfig
from r2m.config.enums import Calibration, JudgeMode, KeepLoop, PPOPrompts, PairLoss, RetrainData, RetrainFrom, SERVariant


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class JudgeConfig:
    """The API judge (``eval.judge``; :class:`r2m.eval.judges.ApiJudge`, docs/EVAL.md): any OpenAI-compatible endpoint.

    Holds no secret: the key stays in the environment variable named by ``api_key_env`` (or in
    ``api_key_file``). A field left null falls back to its ``R2M_JUDGE_*`` environment variable, then to
    the default given in its docstring (:func:`r2m.eval.judges.resolve_judge`, which the judge calls); a value set
    here (YAML, ``eval.judge.x=...`` or Python) wins over both.
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
    mode: Optional[JudgeMode] = None
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
    """Reply cache directory (keyed by endpoint, model, messages, temperature, max_tokens); "" disables the cache.
    Null: $R2M_JUDGE_CACHE, else .r2m_judge_cache."""
    backoff_s: float = 1.0
    """First retry delay, seconds; doubles on every further retry (with jitter in [0.5, 1] of it)."""
    max_backoff_s: float = 60.0
    """Cap on one retry delay (also on a server's Retry-After), seconds."""
    temperature: float = 0.0
    """Sampling temperature of the judge."""
    max_tokens: int = 512
    """Most tokens the judge may reply with (explanation plus verdict)."""

    def __post_init__(self) -> None:
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            # Never echo the value: a key pasted here by mistake must not reach logs or error messages.
            raise ConfigError("eval.judge.api_key_env: expected the NAME of an environment variable "
                              "(letters, digits, _), not a key; the given value is not shown")
        if self.base_url is not None:
            _check(self.base_url.startswith(("http://", "https://")), "eval.judge.base_url", "an http(s) URL",
                   self.base_url)
        _check(self.model is None or bool(self.model), "eval.judge.model", "a model name", self.model)
        _check(self.mode is None or isinstance(self.mode, JudgeMode), "eval.judge.mode",
               "a JudgeMode (pairwise or single)", self.mode)
        _check(self.concurrency is None or self.concurrency >= 1, "eval.judge.concurrency", ">= 1", self.concurrency)
        _check(self.max_retries is None or self.max_retries >= 0, "eval.judge.max_retries", ">= 0", self.max_retries)
        _check(self.timeout is None or self.timeout > 0, "eval.judge.timeout", "> 0", self.timeout)
        _check(self.backoff_s >= 0, "eval.judge.backoff_s", ">= 0", self.backoff_s)
        _check(self.max_backoff_s >= self.backoff_s, "eval.judge.max_backoff_s", ">= backoff_s", self.max_backoff_s)
        _check(self.temperature >= 0, "eval.judge.temperature", ">= 0", self.temperature)
        _check(self.max_tokens >= 1, "eval.judge.max_tokens", ">= 1", self.max_tokens)


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
    """Samples per generation batch; each batch has its own seed, and the batches are shared out over the ranks."""
    max_prompts: int = 512
    """Evaluate the first this many evaluation prompts (0: all); the number left out is logged and recorded as
    ``data/eval_prompts_capped``."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The API judge of ``r2m eval winrate --judge api`` (endpoint, model, key variable, limits, cache)."""

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "eval.temperature", ">= 0", self.temperature)
        _check(self.samples_per_prompt >= 1, "eval.samples_per_prompt", ">= 1", self.samples_per_prompt)
        _check(self.batch_size >= 1, "eval.batch_size", ">= 1", self.batch_size)
        _check(self.max_prompts >= 0, "eval.max_prompts", ">= 0 (0: all)", self.max_prompts)


@dataclass(frozen=True)
class DemoConfig:
    """What ``r2m demo`` runs after building the world."""

    arms: tuple[str, ...] = ("rloo", "r2m")
    """RL arms to run side by side: ``rloo`` (frozen proxy RM), ``r2m`` (RLOO+R2M), ``gold`` (the ceiling)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """RL seeds (``run.seed``) of every arm: the table gives each number's mean and spread over them. The world,
    the SFT policy and the proxy RM are shared (the world's own seeds), so the spread is RL sampling's."""
    kl_budget: float = 0.1
    """The matched-KL column: each run's gold interpolated at this KL on its evaluation points (not reached:
    the run's KL stayed below it)."""

    def __post_init__(self) -> None:
        for a in self.arms:
            _check(a in DEMO_ARMS, "demo.arms", f"arms among {sorted(DEMO_ARMS)}", self.arms)
        _check(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds), "demo.seeds",
               "a non-empty list of distinct ints", self.seeds)
        _check(self.kl_budget > 0, "demo.kl_budget", "> 0", self.kl_budget)


DEMO_ARMS = frozenset({"rloo", "r2m", "gold"})


@dataclass(frozen=True)
class SERLoRAConfig(LoRAConfig):
    """:class:`LoRAConfig` with SER's defaults (App. C.3), so that ``ser.lora.enabled=true`` alone is SER's LoRA
    (every field is redeclared, with its docstring; validation is LoRAConfig's)."""

    enabled: bool = False
    """Train every RM of the run through LoRA adapters instead of fully."""
    r: int = 8
    """Rank of the adapters (SER App. C.3: 8)."""
    dropout: float = 0.1
    """Dropout on the adapters' input (SER: 0.1)."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / r) * B A (SER: 32)."""
    target_modules: tuple[str, ...] = (PEFT_DEFAULT_TARGETS,)
    """As :class:`LoRAConfig`; default ``peft-default``: the modules ``peft`` picks for the architecture
    (``q_proj``, ``v_proj`` on Llama, Qwen2, Mistral), as SER's RMs were trained before issue 13."""


@dataclass(frozen=True)
class SERRLOverrides:
    """The ``rl.*`` fields of SER's PPO stage: each field is the ``rl`` field of the same name (``ser.rl.steps`` is
    that stage's ``rl.steps``); ``rl.algorithm`` is ppo there, whatever ``rl.algorithm`` says."""

    steps: int = 100
    """PPO policy steps (``rl.steps`` of that stage)."""
    beta: float = 0.2
    """Initial KL coefficient (SER App. C.3: 0.2)."""
    kl_adaptive: bool = True
    """Adaptive KL controller (SER: adaptive)."""
    kl_target: float = 0.1
    """Target sequence KL of that controller (SER: 0.1)."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "rl.steps", ">= 1", self.steps)
        _check(self.beta >= 0, "rl.beta", ">= 0", self.beta)
        _check(self.kl_target > 0, "rl.kl_target", "> 0", self.kl_target)


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
    lora: SERLoRAConfig = field(default_factory=SERLoRAConfig)
    """LoRA of every RM of the run (seed, loops, Full; merged into the saved RM) when ``ser.lora.enabled``, with
    SER's settings (App. C.3: r 8, alpha 32, dropout 0.1); off: full fine-tuning, or ``reward.lora``."""
    ppo: bool = True
    """After the loop, train the policy with PPO against the evolved RM."""
    ppo_prompts: PPOPrompts = PPOPrompts.SPLIT
    """``split``: the PPO part's prompts; ``world``: data.prompts."""
    rl: SERRLOverrides = field(default_factory=SERRLOverrides)
    """The ``rl.*`` fields the PPO stage sets (its steps and SER's KL settings); the rest of ``rl`` applies as is."""

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
        _check(not (self.ppo and self.ppo_prompts == PPOPrompts.SPLIT and self.ppo_frac == 0), "ser.ppo_frac",
               "> 0 when ser.ppo and ser.ppo_prompts=split", self.ppo_frac)

    @property
    def filter_delta(self) -> float:
        """delta of the Status-2 (and release) filter."""
        return self.tau_delta if self.delta is None else self.delta

    @property
    def retrain_loss(self) -> PairLoss:
        """The loss of every RM of the run (Loop 0, loops, Full): ``ser.loss``; the release scripts use log-sigmoid."""
        return PairLoss.BT if self.variant == SERVariant.RELEASE else self.loss
