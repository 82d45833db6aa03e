"""Closed choices of the config, one Enum each; YAML and saved config.yaml files hold their values."""

from __future__ import annotations

import enum


class Algorithm(str, enum.Enum):
    """Policy-gradient algorithm: the key of the advantage-estimator registry (:mod:`r2m.core.advantages`; ppo is GAE
    over a critic's values)."""

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


class PairChoice(str, enum.Enum):
    """How R2M's update picks each group's winner and loser for L_BT (issue 14 controls; r2m.core.pair_choice)."""

    SELF = "self"
    """The paper: argmax / argmin of the RM's own rescored rewards."""
    GOLD = "gold"
    """Positive control ("oracle GREBT"): argmax / argmin of the world's gold reward."""
    RANDOM = "random"
    """Negative control: two distinct members of the group drawn at random."""


class OldLogprobs(str, enum.Enum):
    """Where pi_old's log-probs (and R2M's h) come from (docs/GENERATION.md, "pi_old from the generation pass")."""

    RECOMPUTE = "recompute"
    """A second full forward pass of the policy over the sampled sequences (r2m's behaviour before issue 18)."""
    GENERATION = "generation"
    """From ``generate`` itself (its logits, and with R2M its hidden states): no second pass; equal up to float
    rounding (KV-cache vs full attention), not bit-identical; rl.generator=hf only."""


class OptimizerImpl(str, enum.Enum):
    """torch AdamW implementation of the policy (and critic) optimiser."""

    AUTO = "auto"
    """torch's own choice (for-loop on CPU, foreach on CUDA): r2m's behaviour before issue 18."""
    FOREACH = "foreach"
    """Multi-tensor ops (``foreach=True``); bit-identical to the for-loop on CPU in torch 2.13
    (tests/test_optimizer_impl.py)."""
    FUSED = "fused"
    """One fused kernel (``fused=True``; CPU and CUDA); differs from the for-loop by float rounding (~1e-7)."""

    @property
    def torch_kwargs(self) -> dict:
        """The keyword arguments of ``torch.optim.AdamW`` that select this implementation."""
        return {OptimizerImpl.AUTO: {}, OptimizerImpl.FOREACH: {"foreach": True},
                OptimizerImpl.FUSED: {"fused": True}}[self]


class Malloc(str, enum.Enum):
    """How glibc's malloc serves this process's tensors (``run.malloc``; Linux with glibc only)."""

    HEAP = "heap"
    """Every allocation from the heap, freed memory kept for reuse (``mallopt``: ``M_MMAP_MAX=0``,
    ``M_TRIM_THRESHOLD`` at its maximum). Under glibc's defaults a block over the mmap threshold (32 MiB at
    most) is a fresh mapping whose pages fault in, zero-filled, at its first touch, on every allocation: a
    forward+backward at 256 x 72 tokens of a 512-wide Llama ran 1.7x slower per sequence than at 128 x 72,
    and an RL step at twice the prompts 2.9x slower (issue 18's P4). The process's RSS then stays at its peak,
    so a phase's RSS peak includes memory earlier phases freed (``r2m bench``'s cost arms run ``system``)."""
    SYSTEM = "system"
    """glibc's defaults (r2m's behaviour before issue 18)."""


class RewardBaseline(str, enum.Enum):
    """Reward-model baselines of the R2M paper (Table 2), as alternatives to R2M."""

    NONE = "none"
    """The reward model as loaded (vanilla, frozen) or R2M when ``reward.r2m.enabled``."""
    PRETRAINED_RM = "pretrained_rm"
    """Pretrained RM: the RM further trained offline with BT on preference pairs of the policy's prompts."""
    ITERATIVE_HEAD = "iterative_head"
    """Iterative RM-head: GREBT on the annotation-time scores after each step, updating the head only."""
    SCALE_CONTROL = "scale_control"
    """Scale control (issue 14): the frozen vanilla RM's reward times R2M's omega(t), nothing else (beside
    w/o Train)."""


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


class JudgeMode(str, enum.Enum):
    """How the API judge (``eval.judge.mode``; :meth:`r2m.eval.judges.ApiJudge.compare`) decides between two
    responses."""

    PAIRWISE = "pairwise"
    """Both responses in one prompt, asked in both orders; inconsistent verdicts are a tie (SER App. C.2)."""
    SINGLE = "single"
    """Each response scored alone with SER's 5-point rubric (App. D.4); the higher score wins."""


# Closed choices that were plain strings. StrEnum: a member formats, hashes and compares as its value, so
# messages, dict look-ups (torch_dtype) and string comparisons read as they did, and YAML/config.yaml keep the
# same strings.


class Device(enum.StrEnum):
    """``run.device``."""

    AUTO = "auto"
    """CUDA when available, else the CPU."""
    CPU = "cpu"
    CUDA = "cuda"


class Resume(enum.StrEnum):
    """``run.resume``."""

    NEVER = "never"
    AUTO = "auto"
    """Continue from the latest checkpoint that verifies."""


class MixedPrecision(enum.StrEnum):
    """``run.mixed_precision`` (accelerate autocast)."""

    NO = "no"
    BF16 = "bf16"
    FP16 = "fp16"
    """CUDA only."""
    AUTO = "auto"
    """bf16 where CUDA supports it, else fp16 on CUDA, else no."""


class Tracker(enum.StrEnum):
    """An entry of ``run.log_with``: transformers' ``report_to`` values that accelerate has a tracker for."""

    TENSORBOARD = "tensorboard"
    WANDB = "wandb"
    TRACKIO = "trackio"
    MLFLOW = "mlflow"
    COMET_ML = "comet_ml"
    AIM = "aim"
    CLEARML = "clearml"
    DVCLIVE = "dvclive"
    SWANLAB = "swanlab"
    ALL = "all"
    """Every tracker installed (transformers' and accelerate's ``all``)."""
    NONE = "none"
    """No tracker (alone; the same as the empty list)."""


class Overlong(enum.StrEnum):
    """``data.overlong``: prompts longer than data.max_prompt_tokens."""

    TRUNCATE = "truncate"
    """Cut from the left (counted)."""
    SKIP = "skip"
    """Dropped (counted)."""


class OnMismatch(str, enum.Enum):
    """``data.on_mismatch``: what to do with a row whose chosen and rejected do not share a prompt."""

    SKIP = "skip"
    """Skip it and count it in the load report."""
    ERROR = "error"
    """Raise a DataError naming the row."""


class DType(enum.StrEnum):
    """Weights dtype (``policy.dtype``, ``reward.dtype``)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class BackboneDType(enum.StrEnum):
    """``reward.r2m.backbone_dtype``: the frozen RM backbone's precision."""

    SAME = "same"
    """As reward.dtype."""
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class VLLMDType(enum.StrEnum):
    """``rl.vllm.dtype``: the engine's dtype."""

    AUTO = "auto"
    """The checkpoint's."""
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class HiddenDType(enum.StrEnum):
    """``reward.r2m.hidden_dtype``: the dtype R2M's h is stored in."""

    POLICY = "policy"
    """The dtype the policy computes in: run.mixed_precision's (bf16, fp16) when set, else policy.dtype."""
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class HiddenDevice(enum.StrEnum):
    """``reward.r2m.hidden_device``: where h is kept between the rollout and the R2M update."""

    SAME = "same"
    CPU = "cpu"


class Scaling(enum.StrEnum):
    """``reward.scaling``: the map applied to raw RM scores."""

    NONE = "none"
    SIGMOID_CENTERED = "sigmoid_centered"
    """SER's sigmoid(score) - 0.5."""


class Generator(enum.StrEnum):
    """``rl.generator``: the rollout backend."""

    HF = "hf"
    VLLM = "vllm"


class CriticInit(enum.StrEnum):
    """``rl.critic_init``: where PPO's critic starts from."""

    REWARD = "reward"
    POLICY = "policy"
