"""Advantage estimators (RLOO, GRPO, ReMax, REINFORCE++, GAE) behind one registry.

Every estimator has the same explicit signature ``(AdvantageInput, AdvantageParams) ->
AdvantageOutput`` and is registered under the :class:`~r2m.config.enums.Algorithm` that uses it (verl-style:
``rl.algorithm`` is the registry's key; PPO's estimator is GAE over a critic's values), so a trainer picks one by
name with :func:`compute_advantages`. The standalone math (``compute_rloo_advantage``,
``compute_gae``, ...) is public too; the registered functions are thin compositions of it.

Layout: ``N`` prompts, ``K`` samples per prompt, flattened responses ``N*K`` (row ``n*K + k`` is
prompt ``n``, sample ``k``), ``T`` response tokens (right-padded, mask 1 on real tokens).

float16/bfloat16 inputs are computed in float32, and masked positions are selected away (a NaN or inf
there never reaches a return, an advantage or a whitening statistic): see :mod:`r2m.core.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from r2m.config.enums import Algorithm
from r2m.core.losses import apply_mask, full_precision, masked_whiten

__all__ = [
    "AdvantageInput",
    "AdvantageParams",
    "AdvantageOutput",
    "ADVANTAGE_ESTIMATORS",
    "register",
    "compute_advantages",
    "compute_rloo_advantage",
    "compute_grpo_advantage",
    "compute_group_centered",
    "constant_groups",
    "compute_remax_advantage",
    "compute_returns",
    "GAEOutput",
    "compute_gae",
]


@dataclass(frozen=True)
class AdvantageInput:
    """Everything an estimator may read; the unused optional fields stay None."""

    scores: Tensor
    """(N, K) sequence-level rewards from the reward model / judge."""
    mask: Tensor
    """(N*K, T) response-token mask; row n*K + k is prompt n, sample k."""
    kl_penalty: Optional[Tensor] = None
    """(N*K, T) per-token β·KL, already multiplied by β; None (or zeros) when the KL is in the loss."""
    values: Optional[Tensor] = None
    """(N*K, T) critic values V_t (gae only)."""
    baseline: Optional[Tensor] = None
    """(N,) reward of one greedy sample per prompt (remax only)."""


@dataclass(frozen=True)
class AdvantageParams:
    """Hyper-parameters shared by the estimators (each reads only what it needs)."""

    gamma: float = 1.0
    """Discount γ of token-level returns (reinforce_pp, gae)."""
    lam: float = 0.95
    """GAE λ: bias/variance trade-off of the advantage (gae only)."""
    eps: float = 1e-6
    """Added to the group std in grpo so that a constant group gives 0, not NaN."""
    whiten: bool = True
    """Whiten advantages over the whole batch (masked) for reinforce_pp and gae."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam!r}")
        if not self.eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")


class AdvantageOutput(NamedTuple):
    """Token-level advantages (N*K, T), zero where the mask is 0, and the returns (N*K, T)."""

    advantages: Tensor
    returns: Tensor


EstimatorFn = Callable[[AdvantageInput, AdvantageParams], AdvantageOutput]

ADVANTAGE_ESTIMATORS: dict[Algorithm, EstimatorFn] = {}
"""Each algorithm's advantage estimator (PPO: GAE)."""


def register(name: Union[Algorithm, str]) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator: store the function in :data:`ADVANTAGE_ESTIMATORS` under the algorithm ``name``."""
    name = Algorithm(name)

    def deco(fn: EstimatorFn) -> EstimatorFn:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"the advantage estimator of {name.value!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return deco


def compute_advantages(
    algorithm: Union[Algorithm, str], inp: AdvantageInput, params: AdvantageParams = AdvantageParams()
) -> AdvantageOutput:
    """Look up ``algorithm``'s estimator (an :class:`Algorithm` or its string value) in the registry and apply it."""
    try:
        key = Algorithm(algorithm)
    except ValueError:
        valid = ", ".join(e.value for e in Algorithm)
        raise ValueError(f"unknown algorithm {algorithm!r} (no advantage estimator); valid: {valid}") from None
    if key not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"algorithm {key.value!r} has no registered advantage estimator")
    upcast = {f.name: full_precision(getattr(inp, f.name)) for f in fields(inp)
              if f.name != "mask" and getattr(inp, f.name) is not None}
    return ADVANTAGE_ESTIMATORS[key](replace(inp, **upcast), params)


# --------------------------------------------------------------------------------------------
# Standalone math
# --------------------------------------------------------------------------------------------


def _check_group(rewards: Tensor, name: str) -> None:
    if rewards.dim() != 2 or rewards.shape[-1] < 2:
        raise ValueError(f"{name} needs rewards of shape (N, K) with K >= 2, got {tuple(rewards.shape)}")


def compute_rloo_advantage(rewards: Tensor) -> Tensor:
    """RLOO (R2M Eq. 1): A_ij = r_ij − 1/(K − 1) Σ_{j' ≠ j} r_ij', rewards (N, K) → (N, K), K ≥ 2.

    Each sample's baseline is the mean of the other K − 1 samples of its prompt, so it does not
    depend on the sample itself and the estimator stays unbiased. A constant group gives exactly 0
    (the float sum would leave about one ulp).
    """
    _check_group(rewards, "rloo")
    rewards = full_precision(rewards)
    k = rewards.shape[-1]
    leave_one_out = (rewards.sum(dim=-1, keepdim=True) - rewards) / (k - 1)  # (N, K)
    return (rewards - leave_one_out).masked_fill(constant_groups(rewards), 0.0)  # (N, K)


def constant_groups(rewards: Tensor) -> Tensor:
    """(N, K) → (N, 1) bool: True where every reward of the group equals the first one, exactly.

    A float32 mean of K equal values is off by about one ulp (0.7 · 8 does not sum to 5.6 exactly),
    so r − mean is not 0 there; this test does not go through a sum.
    """
    return (rewards == rewards[..., :1]).all(dim=-1, keepdim=True)  # (N, 1)


def compute_group_centered(rewards: Tensor) -> Tensor:
    """Dr. GRPO's advantage: A_ij = r_ij − mean_j r_ij, rewards (N, K) → (N, K), K ≥ 2.

    No division by the group std (Liu et al., 2025, "Understanding R1-Zero-Like Training"): the std
    scaling up-weights groups whose rewards barely differ. A constant group gives exactly 0.
    """
    _check_group(rewards, "dr_grpo")
    rewards = full_precision(rewards)
    centered = rewards - rewards.mean(dim=-1, keepdim=True)  # (N, K)
    return centered.masked_fill(constant_groups(rewards), 0.0)  # (N, K)


def compute_grpo_advantage(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """GRPO: A_ij = (r_ij − mean_j r_ij) / (std_j r_ij + eps), rewards (N, K) → (N, K), K ≥ 2.

    std is the UNBIASED group std (divide by K − 1; torch's default, as in GRPO and verl). A group
    whose rewards are all equal gets A = 0 exactly: its float mean and std are each off by about one
    ulp, and (r − mean) / (std + eps) would otherwise give every sample the same non-zero advantage
    (|A| up to ~1 at K = 8–16), which is R2M's group degeneration case.
    """
    _check_group(rewards, "grpo")
    rewards = full_precision(rewards)
    mean = rewards.mean(dim=-1, keepdim=True)  # (N, 1)
    std = rewards.std(dim=-1, keepdim=True)  # (N, 1) unbiased
    adv = (rewards - mean) / (std + eps)  # (N, K)
    return adv.masked_fill(constant_groups(rewards), 0.0)  # (N, K)


def compute_remax_advantage(rewards: Tensor, baseline: Tensor) -> Tensor:
    """ReMax: A_ij = r_ij − b_i, b_i the reward of the greedy response; (N, K), (N,) → (N, K)."""
    if baseline.shape != rewards.shape[:1]:
        raise ValueError(f"baseline must be (N,) = {tuple(rewards.shape[:1])}, got {tuple(baseline.shape)}")
    return full_precision(rewards) - full_precision(baseline).unsqueeze(-1)  # (N, K): one greedy baseline per group


def compute_returns(token_rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Discounted reward-to-go G_t = Σ_{t' ≥ t} γ^{t' − t} r_t' over valid tokens, (B, T) → (B, T).

    Computed as G_t = m_t (r_t + γ G_{t+1}); with right padding G is 0 past the last valid token,
    so nothing is bootstrapped from padding, and masked positions get 0.
    """
    token_rewards = full_precision(token_rewards)
    m = mask.to(token_rewards.dtype)  # (B, T)
    returns = torch.zeros_like(token_rewards)  # (B, T)
    running = torch.zeros_like(token_rewards[:, 0])  # (B,)
    for t in reversed(range(token_rewards.shape[-1])):  # loop over T only, vectorised over B
        running = apply_mask(token_rewards[:, t] + gamma * running, m[:, t])  # (B,)
        returns[:, t] = running
    return returns


class GAEOutput(NamedTuple):
    """GAE advantages and returns (B, T), zero where the mask is 0."""

    advantages: Tensor
    returns: Tensor


def compute_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> GAEOutput:
    """Generalised advantage estimation on token-level inputs (B, T):

    δ_t = r_t + γ V_{t+1} − V_t (V_{t+1} = 0 past the last valid token),
    A_t = Σ_l (γλ)^l δ_{t+l}, computed as A_t = m_t (δ_t + γλ A_{t+1}); returns R_t = A_t + V_t.
    Masked (right-padded) positions get 0 and are never bootstrapped from. No whitening here.
    """
    rewards, values = full_precision(rewards), full_precision(values)
    m = mask.to(values.dtype)  # (B, T)
    n_tokens = values.shape[-1]
    advantages = torch.zeros_like(values)  # (B, T)
    running = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(n_tokens)):  # loop over T only, vectorised over B
        if t + 1 < n_tokens:
            next_value = apply_mask(values[:, t + 1], m[:, t + 1])  # (B,) 0 once the response has ended
        else:
            next_value = torch.zeros_like(running)  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        running = apply_mask(delta + gamma * lam * running, m[:, t])  # (B,)
        advantages[:, t] = running
    returns = apply_mask(advantages + values, m)  # (B, T)
    return GAEOutput(advantages=advantages, returns=returns)


# --------------------------------------------------------------------------------------------
# Registered estimators
# --------------------------------------------------------------------------------------------


class _GroupShape(NamedTuple):
    """Prompts N and samples per prompt K of an input."""

    n: int
    k: int


def _check_input(inp: AdvantageInput) -> _GroupShape:
    """Validate the shapes of an input against scores (N, K) and mask (N*K, T)."""
    if inp.scores.dim() != 2:
        raise ValueError(f"scores must be (N, K), got {tuple(inp.scores.shape)}")
    n, k = inp.scores.shape
    if inp.mask.dim() != 2 or inp.mask.shape[0] != n * k:
        raise ValueError(f"mask must be (N*K, T) = ({n * k}, T), got {tuple(inp.mask.shape)}")
    for name in ("kl_penalty", "values"):
        tensor = getattr(inp, name)
        if tensor is not None and tensor.shape != inp.mask.shape:
            raise ValueError(f"{name} must have the mask's shape {tuple(inp.mask.shape)}, got {tuple(tensor.shape)}")
    return _GroupShape(n=n, k=k)


def _masked_kl(inp: AdvantageInput) -> Tensor:
    """β·KL per token restricted to response tokens (zeros when no penalty is given), (N*K, T)."""
    m = inp.mask.to(inp.scores.dtype)  # (N*K, T)
    if inp.kl_penalty is None:
        return torch.zeros_like(m)
    return apply_mask(inp.kl_penalty.to(m.dtype), m)  # (N*K, T)


def _sequence_rewards(inp: AdvantageInput) -> Tensor:
    """r = score − Σ_t β·KL_t per sequence, (N, K): the reward that rloo/grpo/remax see."""
    n, k = _check_input(inp)
    return inp.scores - _masked_kl(inp).sum(dim=-1).view(n, k)  # (N, K)


def _broadcast(seq_values: Tensor, mask: Tensor) -> Tensor:
    """Per-sequence values (N, K) onto every response token, (N*K, T), zero where masked."""
    return apply_mask(seq_values.reshape(-1, 1), mask)  # (N*K, T)


def _token_rewards(inp: AdvantageInput) -> Tensor:
    """Token rewards r_t = −β·KL_t, plus the score at the last valid token of each response, (N*K, T)."""
    _check_input(inp)
    m = inp.mask.to(inp.scores.dtype)  # (N*K, T)
    positions = torch.arange(m.shape[-1], device=m.device, dtype=m.dtype)  # (T,)
    # largest masked position = last valid token (0 for an empty row, masked away below)
    last = (positions * m).argmax(dim=-1, keepdim=True)  # (N*K, 1)
    rewards = -_masked_kl(inp)  # (N*K, T)
    rewards = rewards.scatter_add(-1, last, inp.scores.reshape(-1, 1).to(m.dtype))  # (N*K, T)
    return apply_mask(rewards, m)


@register(Algorithm.RLOO)
def rloo_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """RLOO on r = score − Σ_t β·KL_t, broadcast to tokens; returns = broadcast r."""
    rewards = _sequence_rewards(inp)  # (N, K)
    adv = compute_rloo_advantage(rewards)  # (N, K)
    return AdvantageOutput(advantages=_broadcast(adv, inp.mask), returns=_broadcast(rewards, inp.mask))


@register(Algorithm.GRPO)
def grpo_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """GRPO group normalisation of r = score − Σ_t β·KL_t, broadcast to tokens; returns = broadcast r."""
    rewards = _sequence_rewards(inp)  # (N, K)
    adv = compute_grpo_advantage(rewards, eps=params.eps)  # (N, K)
    return AdvantageOutput(advantages=_broadcast(adv, inp.mask), returns=_broadcast(rewards, inp.mask))


@register(Algorithm.DR_GRPO)
def dr_grpo_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """Dr. GRPO: r − group mean of r = score − Σ_t β·KL_t (no std scaling), broadcast to tokens.

    Its paper pairs it with a constant loss normaliser (``LossAggregation.SEQ_MEAN_TOKEN_SUM_NORM``)."""
    rewards = _sequence_rewards(inp)  # (N, K)
    adv = compute_group_centered(rewards)  # (N, K)
    return AdvantageOutput(advantages=_broadcast(adv, inp.mask), returns=_broadcast(rewards, inp.mask))


@register(Algorithm.REMAX)
def remax_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """ReMax: r − b with b the greedy reward per prompt, broadcast to tokens; returns = broadcast r."""
    if inp.baseline is None:
        raise ValueError("remax needs AdvantageInput.baseline: the (N,) reward of a greedy sample per prompt")
    rewards = _sequence_rewards(inp)  # (N, K)
    adv = compute_remax_advantage(rewards, inp.baseline.to(rewards.dtype))  # (N, K)
    return AdvantageOutput(advantages=_broadcast(adv, inp.mask), returns=_broadcast(rewards, inp.mask))


@register(Algorithm.REINFORCE_PP)
def reinforce_pp_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """REINFORCE++: A_t = whiten(G_t), G_t = Σ_{t' ≥ t} γ^{t' − t} r_t' on token rewards
    r_t = −β·KL_t (+ score at the last token); whitening is global over the batch (masked)."""
    m = inp.mask.to(inp.scores.dtype)  # (N*K, T)
    returns = compute_returns(_token_rewards(inp), m, params.gamma)  # (N*K, T)
    adv = apply_mask(masked_whiten(returns, m), m) if params.whiten else returns  # (N*K, T)
    return AdvantageOutput(advantages=adv, returns=returns)


@register(Algorithm.REINFORCE_PP_BASELINE)
def reinforce_pp_baseline_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """REINFORCE++-baseline (OpenRLHF's ``reinforce_baseline``): each score minus its group's mean
    score, then REINFORCE++ on it: token rewards r_t = −β·KL_t (+ the centred score at the last token),
    returns G_t, and global whitening (masked) over the batch."""
    _check_input(inp)
    centered = compute_group_centered(inp.scores)  # (N, K)
    return reinforce_pp_estimator(AdvantageInput(scores=centered, mask=inp.mask, kl_penalty=inp.kl_penalty), params)


@register(Algorithm.PPO)
def gae_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """PPO's GAE on token rewards r_t = −β·KL_t (+ score at the last token) and critic values;
    returns = A + V (unwhitened, the critic's target), advantages whitened (masked) if asked."""
    if inp.values is None:
        raise ValueError("gae needs AdvantageInput.values: the (N*K, T) critic values")
    m = inp.mask.to(inp.scores.dtype)  # (N*K, T)
    values = inp.values.to(m.dtype)  # (N*K, T)
    gae = compute_gae(_token_rewards(inp), values, m, params.gamma, params.lam)
    adv = apply_mask(masked_whiten(gae.advantages, m), m) if params.whiten else gae.advantages  # (N*K, T)
    return AdvantageOutput(advantages=adv, returns=gae.returns)
