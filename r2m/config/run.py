"""The ``run``, ``world`` and ``data`` sections."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional

from r2m.config.paths import PathFormats, PathSplits
from r2m.config.checks import _check
from r2m.config.enums import Device, Malloc, MixedPrecision, OnMismatch, Overlong, Resume, Tracker
from r2m.config.paths import DatasetFormat


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    """Run name; outputs go to ``<root>/<name>/``."""
    root: str = "runs"
    """Directory holding all run directories and the world cache."""
    seed: int = 0
    """Seed for python, numpy and torch."""
    device: Device = Device.AUTO
    """``auto`` (CUDA if present, else CPU), ``cpu`` or ``cuda``."""
    log_with: tuple[Tracker, ...] = (Tracker.TENSORBOARD,)
    """Trackers to log to, through accelerate (transformers' ``report_to`` values): ``tensorboard``, ``wandb``,
    ``trackio``, ``mlflow``, ``comet_ml``, ``aim``, ``clearml``, ``dvclive``, ``swanlab``; ``all`` (every one
    installed); ``none`` or empty for none. A tracker named but not installed is an error."""
    push_to_hub: bool = False
    """Upload the trained policy (checkpoints/final, with its model card) to the Hub at the end of the run."""
    hub_model_id: Optional[str] = None
    """The Hub repository of run.push_to_hub (``org/name``); None: the run's name under the token's user."""
    hub_private_repo: Optional[bool] = None
    """Create the Hub repository private (None: the Hub's default)."""
    progress: bool = True
    """Show a progress bar."""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default."""
    malloc: Malloc = Malloc.HEAP
    """glibc's allocator: ``heap`` (large tensors reuse freed heap memory instead of fresh page-faulting
    mappings; RSS stays at its peak) or ``system`` (glibc's defaults). Changes no number, only speed."""
    resume: Resume = Resume.NEVER
    """``auto``: continue from the latest complete checkpoint of this run, if any; ``never``: start fresh."""
    keep_checkpoints: int = 3
    """Keep the newest K training checkpoints (0 keeps all)."""
    max_bad_steps: int = 3
    """Stop (with a checkpoint) after this many consecutive steps with a NaN/inf reward, advantage or loss."""
    allow_unsafe_weights: bool = False
    """Allow pickle (.bin) weights. Off: only safetensors are loaded."""
    mixed_precision: MixedPrecision = MixedPrecision.NO
    """accelerate autocast: ``no``, ``bf16``, ``fp16`` (CUDA only) or ``auto`` (bf16 where CUDA supports it, else
    fp16 on CUDA, else no). ``no`` defers to ``accelerate launch --mixed_precision`` (ACCELERATE_MIXED_PRECISION);
    any other value wins over the launcher."""

    def __post_init__(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "run.name", "a non-empty name without '/'", self.name)
        _check(self.threads >= 0, "run.threads", ">= 0", self.threads)
        _check(self.keep_checkpoints >= 0, "run.keep_checkpoints", ">= 0", self.keep_checkpoints)
        _check(self.max_bad_steps >= 1, "run.max_bad_steps", ">= 1", self.max_bad_steps)
        _check(Tracker.NONE not in self.log_with or len(self.log_with) == 1, "run.log_with",
               "'none' alone (no tracker), or a list of trackers", [str(t) for t in self.log_with])
        _check(self.hub_model_id is None or self.push_to_hub, "run.hub_model_id",
               "null unless run.push_to_hub=true", self.hub_model_id)
        _check(not (self.device == "cpu" and self.mixed_precision == "fp16"), "run.mixed_precision",
               "no, bf16 or auto with run.device=cpu (fp16 autocast needs CUDA)", self.mixed_precision)


MIXED_PRECISIONS = tuple(m.value for m in MixedPrecision)


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
    wrong_digit: float = 0.0
    """Sorted and of the right length, with one digit replaced by another: wrong in a way only a reader of the
    prompt can see (the ``blind`` world, docs/WORLDS.md)."""

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
    rm_seed: Optional[int] = None
    """Seed of what makes the proxy RM: its training pairs (pref_train, pref_policy), head init and batch order
    (None: ``seed``). The SFT data, prompts and held-out pairs stay on ``seed`` (docs/WORLDS.md)."""
    rm_prompt_digits: int = 0
    """The ``blind`` world: the RM reads only the first N prompt digits, the others masked as ``<unk>``
    (0: the RM reads the whole prompt). The policy always reads all of them."""

    def __post_init__(self) -> None:
        _check(self.rm_prompt_digits >= 0, "world.rm_prompt_digits", ">= 0 (0: the whole prompt)",
               self.rm_prompt_digits)
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
    overlong: Overlong = Overlong.TRUNCATE
    """``truncate`` (keep the last max_prompt_tokens tokens) or ``skip`` over-long prompts."""
    format: DatasetFormat = DatasetFormat.PLAIN
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
    on_mismatch: OnMismatch = OnMismatch.SKIP
    """Rows a format cannot use (e.g. HH-RLHF pairs whose prompts differ): ``skip`` (counted) or ``error``."""

    def __post_init__(self) -> None:
        _check(self.max_prompt_tokens >= 1, "data.max_prompt_tokens", ">= 1", self.max_prompt_tokens)
        for train, held_out in (("prompts", "eval_prompts"), ("pref_train", "pref_eval")):
            source = getattr(self, train)
            if source is None or getattr(self, held_out) != source:
                continue
            _check(not source.endswith((".jsonl", ".json", ".parquet")), f"data.{held_out}",
                   f"another file than data.{train} (a single file is one split: evaluation would read the training "
                   "rows)", source)
            splits = (getattr(self.splits, train) or self.train_split,
                      getattr(self.splits, held_out) or self.eval_split)
            _check(splits[1] is not None and splits[1] != splits[0], f"data.splits.{held_out}",
                   f"a split other than data.{train}'s (both read {source}; without one, evaluation would read the "
                   "training split: set data.eval_split or data.splits." + held_out + ")", splits[1])
        _check(self.max_response_tokens >= 0, "data.max_response_tokens", ">= 0", self.max_response_tokens)
