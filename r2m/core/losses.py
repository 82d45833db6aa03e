"""Pure loss functions: masked reductions, reward-model losses (BT, SER hinge, R2M GREBT), KL
estimators, loss aggregation and the PPO clipped policy / value losses.

Everything here is a small pure function of tensors: no modules, no state, no config objects.
Shapes: ``N`` prompts (groups), ``K`` samples per group, ``B`` sequences, ``T`` tokens, ``V`` vocab.

Numerics: float16/bfloat16 inputs are computed in float32 (:func:`full_precision`); masks select
(:func:`apply_mask`), so a NaN or inf at a masked (padded) position never reaches a sum or a gradient; the
token log-ratio and k3 are clamped as verl and OpenRLHF clamp them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from r2m.config.enums import KLEstimator, LossAggregation, RatioLevel

Number = Union[int, float]

__all__ = [
    "full_precision",
    "apply_mask",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "bradley_terry_loss",
    "margin_pairwise_loss",
    "within_group_spread",
    "group_reward_entropy",
    "GREBTLoss",
    "grebt_terms",
    "grebt_loss",
    "kl_penalty",
    "aggregate",
    "PolicyLossOutput",
    "clipped_policy_loss",
    "sequence_clipped_policy_loss",
    "POLICY_LOSSES",
    "ValueLossOutput",
    "clipped_value_loss",
    "entropy_from_logits",
]


# --------------------------------------------------------------------------------------------
# Masked reductions
# --------------------------------------------------------------------------------------------


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when it is float16 or bfloat16, else as it is (float32 and float64 are kept)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def apply_mask(x: Tensor, mask: Tensor) -> Tensor:
    """x · m where m ≠ 0 and exactly 0 elsewhere (a select, not a product: nan · 0 is NaN, this is 0, and the
    gradient at a masked position is 0 too). ``mask`` broadcasts against ``x``; fractional weights are kept."""
    m = mask.to(x.dtype)
    return torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (an empty mask means "no tokens", not NaN)."""
    # Replacing the zero denominators (instead of clamping) keeps the result exact for any positive
    # denominator, fractional mask weights included; the numerator is 0 wherever den is 0.
    return num / torch.where(den > 0, den, torch.ones_like(den))


def masked_sum(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Masked sum: Σ_i x_i · m_i, over all elements (``dim=None``) or along ``dim``; masked elements add nothing,
    whatever their value (NaN, inf)."""
    prod = apply_mask(full_precision(x), mask)  # same shape as x
    return prod.sum() if dim is None else prod.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """Masked mean: Σ_i x_i · m_i / Σ_i m_i; returns 0 (not NaN) where the mask is empty."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return _safe_div(masked_sum(x, mask, dim), count)


def masked_var(x: Tensor, mask: Tensor, dim: Optional[int] = None, unbiased: bool = True) -> Tensor:
    """Masked variance: Σ_i m_i (x_i − μ)² / (Σ_i m_i − 1) with μ the masked mean.

    ``unbiased`` applies Bessel's correction (as TRL/verl do for whitening); it is skipped where
    fewer than two elements are unmasked, and an empty mask gives 0.
    """
    x = full_precision(x)
    mean = masked_mean(x, mask, dim)
    if dim is not None:
        mean = mean.unsqueeze(dim)  # broadcast back over the reduced dim
    count = masked_sum(torch.ones_like(x), mask, dim)
    var = masked_mean((x - mean) ** 2, mask, dim)
    if unbiased:
        # n / (n − 1) only where it is defined; n ≤ 1 keeps the biased (0) value
        bessel = torch.where(count > 1, count / (count - 1).clamp_min(1e-12), torch.ones_like(count))
        var = var * bessel
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Masked whitening over all elements: (x − μ) / √(σ² + eps), μ, σ² the masked mean/variance.

    With ``shift_mean=False`` the mean is added back (only the scale is normalised). Masked-out
    positions are transformed like the others; :func:`apply_mask` the result if they must be zero.
    """
    x = full_precision(x)
    mean = masked_mean(x, mask)  # ()
    var = masked_var(x, mask)  # ()
    whitened = (x - mean) * torch.rsqrt(var + eps)  # same shape as x
    return whitened if shift_mean else whitened + mean


# --------------------------------------------------------------------------------------------
# Reward-model losses
# --------------------------------------------------------------------------------------------


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Bradley-Terry pairwise loss (R2M Eq. 5): L = −E[log σ(r_c − r_r)], with ``chosen``/``rejected`` (N,).

    Equal scores give log 2.
    """
    return -F.logsigmoid(full_precision(chosen) - full_precision(rejected)).mean()  # ()


def margin_pairwise_loss(chosen: Tensor, rejected: Tensor, margin: Union[float, Tensor]) -> Tensor:
    """SER hinge (Eq. 5): L = E[max(0, m − (r_c − r_r))], with ``chosen``/``rejected`` (N,).

    ``margin`` m is a float or a per-pair (N,) tensor. Pairs already separated by at least m cost
    nothing (and get no gradient).
    """
    return F.relu(margin - (full_precision(chosen) - full_precision(rejected))).mean()  # ()


def within_group_spread(scores: Tensor, k: int) -> Tensor:
    """Mean over groups of the population std of the K scores of each group: (N*K,) → ().

    Rows are prompt-major (row n*K + j is sample j of prompt n). This is the spread that RLOO/GRPO
    advantages and R2M's winner/loser choice see; an offset shared by a group does not count.
    """
    groups = scores.reshape(-1, k).float()  # (N, K)
    return groups.std(dim=-1, unbiased=False).mean()  # ()


def group_reward_entropy(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Group reward entropy (R2M GRE, Eq. 6) per group: H = −Σ_k p_k log p_k, p = softmax(z),
    z_k = (r_k − μ) / (σ + eps), μ and σ the group mean and POPULATION std (divide by K).

    ``rewards`` (N, K) → (N,). Standardising first makes H depend only on the shape of the reward
    spread, not its scale; eps makes a constant group uniform (H = log K) instead of NaN.
    """
    rewards = full_precision(rewards)
    mean = rewards.mean(dim=-1, keepdim=True)  # (N, 1)
    var = ((rewards - mean) ** 2).mean(dim=-1, keepdim=True)  # (N, 1) population variance
    # sqrt has an infinite derivative at 0: clamping to the smallest normal keeps the gradient of a
    # constant group finite (0) without changing any value by more than ~1e-19.
    std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()  # (N, 1)
    z = (rewards - mean) / (std + eps)  # (N, K)
    logp = F.log_softmax(z, dim=-1)  # (N, K)
    return -(logp.exp() * logp).sum(dim=-1)  # (N,)


class GREBTLoss(NamedTuple):
    """GREBT loss and its two parts (scalars); ``bt`` and ``gre`` are detached, for logging."""

    loss: Tensor
    bt: Tensor
    gre: Tensor


def grebt_terms(rewards: Tensor, alpha: float, eps: float = 1e-6, pair=None) -> GREBTLoss:
    """R2M group loss (GREBT, R2M Eq. 7): L = mean_n [(1 − α) L_BT,n + α L_GRE,n] over groups of K ≥ 2
    rewards (N, K).

    L_BT,n = −log σ(r_w − r_l) with w = argmax_k r_nk (winner) and l = argmin_k r_nk (loser), or, when
    ``pair`` is given (a :class:`r2m.core.pair_choice.WinnerLoser`: ``winner``, ``loser`` of shape (N,)),
    w = pair.winner[n] and l = pair.loser[n] (the benchmark's oracle and random controls);
    L_GRE,n = group_reward_entropy(r_n) (see there). Gradients flow into the selected winner and
    loser values and, through the entropy, into every reward. ``bt`` and ``gre`` are the group means
    of each part, detached (they are for logging; only ``loss`` is meant to be differentiated).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if rewards.dim() != 2 or rewards.shape[-1] < 2:
        raise ValueError(f"rewards must be (N, K) with K >= 2, got shape {tuple(rewards.shape)}")
    rewards = full_precision(rewards)
    if pair is None:
        # max/min route the gradient to the selected element, exactly like gathering at argmax/argmin
        winner = rewards.max(dim=-1).values  # (N,)
        loser = rewards.min(dim=-1).values  # (N,)
    else:
        picked = _gather_pair(rewards, pair.winner, pair.loser)  # (N, 2)
        winner, loser = picked[:, 0], picked[:, 1]  # (N,), (N,)
    bt = -F.logsigmoid(winner - loser)  # (N,)
    gre = group_reward_entropy(rewards, eps=eps)  # (N,)
    loss = ((1.0 - alpha) * bt + alpha * gre).mean()  # ()
    return GREBTLoss(loss=loss, bt=bt.mean().detach(), gre=gre.mean().detach())


def _gather_pair(rewards: Tensor, winner: Tensor, loser: Tensor) -> Tensor:
    """(N, 2): r[n, winner[n]] and r[n, loser[n]] of (N, K) rewards, with the (N,) indices checked."""
    n, k = rewards.shape
    for name, idx in (("winner", winner), ("loser", loser)):
        if idx.shape != (n,) or idx.dtype != torch.long or (n and (idx.min() < 0 or idx.max() >= k)):
            raise ValueError(f"grebt pair {name}: expected ({n},) long indices in [0, {k}), got shape "
                             f"{tuple(idx.shape)} dtype {idx.dtype}")
    return rewards.gather(-1, torch.stack([winner, loser], dim=-1).to(rewards.device))  # (N, 2)


def grebt_loss(rewards: Tensor, alpha: float, eps: float = 1e-6) -> Tensor:
    """Scalar R2M GREBT loss (R2M Eq. 7) L = mean_n [(1 − α) L_BT,n + α L_GRE,n]; see :func:`grebt_terms`."""
    return grebt_terms(rewards, alpha, eps=eps).loss


# --------------------------------------------------------------------------------------------
# KL to the reference policy
# --------------------------------------------------------------------------------------------


K3_LOG_RATIO_CLAMP, K3_CLAMP = 20.0, 10.0
"""k3's clamps, verl's: ``kl_penalty_forward`` for ``low_var_kl`` (volcengine/verl b178a3c,
verl/trainer/ppo/core_algos.py) clamps ref − logprob to [−20, 20] before exp and the estimate to [−10, 10];
OpenRLHF's ``compute_approx_kl`` (OpenRLHF 3c3be62, openrlhf/models/utils.py) clamps its estimate to [−10, 10]."""


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: Union[KLEstimator, str],
               mask: Optional[Tensor] = None) -> Tensor:
    """Per-token estimator of KL(π || π_ref) from sampled-token log-probs (B, T) → (B, T).

    With d = log π − log π_ref (Schulman's estimators, samples from π):
    k1 = d (unbiased, high variance, can be negative); k2 = ½ d² (biased, low variance, ≥ 0);
    k3 = exp(−d) − 1 + d = (π_ref/π − 1) − log(π_ref/π) (unbiased, low variance, ≥ 0).

    k3 is computed on d clamped to ±20 and clamped to [−10, 10] itself, as verl's ``low_var_kl``
    (:data:`K3_LOG_RATIO_CLAMP`): exp(−d) overflows float32 for d < −88.7, and one such token would be an
    inf penalty (and a NaN gradient). With ``mask``, d is 0 (so every estimate is 0) where the mask is 0,
    before any nonlinearity: a NaN or inf there reaches neither the value nor the gradient.
    """
    kind = KLEstimator(kind)
    d = full_precision(logprobs) - full_precision(ref_logprobs)  # (B, T)
    if mask is not None:
        d = torch.where(mask != 0, d, torch.zeros((), dtype=d.dtype, device=d.device))
    if kind is KLEstimator.K1:
        return d
    if kind is KLEstimator.K2:
        return 0.5 * d**2
    d = d.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    # expm1 keeps k3 accurate near d = 0, where exp(−d) − 1 would cancel catastrophically
    return (torch.expm1(-d) + d).clamp(-K3_CLAMP, K3_CLAMP)  # (B, T)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def aggregate(
    values: Tensor,
    mask: Tensor,
    aggregation: Union[LossAggregation, str],
    num_tokens: Optional[Union[Number, Tensor]] = None,
    num_seqs: Optional[Union[Number, Tensor]] = None,
    horizon: Optional[int] = None,
) -> Tensor:
    """Reduce per-token values v (B, T) under mask m (B, T) to a scalar.

    - ``token_mean``: Σ_b Σ_t v·m / N_tok, N_tok = ``num_tokens`` or Σ m. Every token weighs the
      same, so long answers weigh more (standard PPO, DAPO).
    - ``seq_mean_token_sum``: Σ_b Σ_t v·m / N_seq, N_seq = ``num_seqs`` or B. A sequence-level sum
      without length normalisation (Dr. GRPO): dividing by each length biases towards long wrong
      answers and short right ones, this does not.
    - ``seq_mean_token_mean``: Σ_b [Σ_t v·m / max(1, Σ_t m)] / N_seq. Each sequence weighs the same
      whatever its length (original GRPO).
    - ``seq_mean_token_sum_norm``: Σ_b Σ_t v·m / (N_seq · T_max), T_max = ``horizon`` or T: the
      token sum over a constant, the generation budget (Dr. GRPO; TRL's ``dr_grpo`` loss).

    ``num_tokens`` / ``num_seqs`` are the GLOBAL normalisers of the whole minibatch: passing them
    to every micro-batch makes the sum of micro-batch losses (and gradients) equal the loss of the
    full minibatch exactly under gradient accumulation, which local means would not.
    """
    aggregation = LossAggregation(aggregation)
    values = full_precision(values)
    m = mask.to(values.dtype)  # (B, T)
    if aggregation is LossAggregation.TOKEN_MEAN:
        total = masked_sum(values, m)  # ()
        den = m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=values.dtype)
        return _safe_div(total, den.to(values.device))
    n_seqs = values.shape[0] if num_seqs is None else num_seqs
    if aggregation is LossAggregation.SEQ_MEAN_TOKEN_SUM:
        per_seq = masked_sum(values, m, dim=-1)  # (B,)
    elif aggregation is LossAggregation.SEQ_MEAN_TOKEN_SUM_NORM:
        per_seq = masked_sum(values, m, dim=-1) / (values.shape[-1] if horizon is None else horizon)  # (B,)
    else:
        per_seq = masked_sum(values, m, dim=-1) / m.sum(dim=-1).clamp_min(1.0)  # (B,)
    return per_seq.sum() / n_seqs


# --------------------------------------------------------------------------------------------
# PPO losses
# --------------------------------------------------------------------------------------------


MAX_LOG_RATIO = 20.0
"""Clamp of the token log-ratio log π − log π_old before exp, the peers': verl's ``compute_policy_loss_vanilla``
(volcengine/verl b178a3c, verl/trainer/ppo/core_algos.py: ``torch.clamp(negative_approx_kl, min=-20.0,
max=20.0)``) and OpenRLHF's ``PolicyLoss`` (OpenRLHF 3c3be62, openrlhf/models/loss.py: ``clamp(min=-20.0,
max=20.0)``). exp(20) ≈ 4.9e8 is far past any clip bound; exp of 88.7 overflows float32."""

class PolicyLossOutput(NamedTuple):
    """Aggregated clipped policy loss, plus detached diagnostics over the local batch."""

    loss: Tensor
    clip_fraction: Tensor
    approx_kl: Tensor


class _Surrogate(NamedTuple):
    loss: Tensor  # elementwise ℓ
    clipped: Tensor  # elementwise 1.0 where the clipped term wins (and differs)


def _surrogate(ratio: Tensor, advantages: Tensor, clip_eps: float, clip_eps_high: Optional[float],
               clip_ratio_c: Optional[float]) -> _Surrogate:
    """ℓ = max(−A ρ, −A clip(ρ, 1 − ε_low, 1 + ε_high)), then for A < 0 min(ℓ, −A c) (dual clip).

    Elementwise on any shape, for the callers to reduce.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    # max of the two negated surrogates = pessimistic (lower) bound on the improvement
    loss = torch.maximum(unclipped, clipped)
    if clip_ratio_c is not None:
        # Dual clip (Ye et al. 2020): with A < 0 a huge ratio would make an unbounded loss; cap it at −A·c.
        loss = torch.where(advantages < 0, torch.minimum(loss, -advantages * clip_ratio_c), loss)
    return _Surrogate(loss, (clipped > unclipped).to(loss.dtype))


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    aggregation: Union[LossAggregation, str] = "token_mean",
    num_tokens: Optional[Union[Number, Tensor]] = None,
    num_seqs: Optional[Union[Number, Tensor]] = None,
    horizon: Optional[int] = None,
    clip_eps_high: Optional[float] = None,
    clip_ratio_c: Optional[float] = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate per token (R2M Eq. 2, per token):
    ℓ_t = max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε_high)),
    ρ_t = exp(log π − log π_old); with ``clip_ratio_c`` and A_t < 0, ℓ_t = min(ℓ_t, −A_t c) (dual clip).
    log π − log π_old is clamped to ±:data:`MAX_LOG_RATIO` before exp (as verl and OpenRLHF) and is 0 at masked
    positions, so neither an extreme ratio nor garbage at a padded position gives an inf loss or NaN gradient.

    ``logprobs``/``old_logprobs``/``mask`` (B, T); ``advantages`` (B,) (broadcast over tokens) or
    (B, T). ℓ is reduced with :func:`aggregate`. ``clip_fraction`` is the masked share of tokens
    where the clipped term wins (and differs); ``approx_kl`` the masked mean of ½(log π − log π_old)²;
    both detached and over the local batch. ε_high defaults to ε (DAPO's clip-higher sets it larger).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # (B, 1): a sequence advantage for every token
    advantages = full_precision(advantages)
    log_ratio = apply_mask(full_precision(logprobs) - full_precision(old_logprobs), mask)  # (B, T) 0 where masked
    ratio = torch.exp(log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))  # (B, T)
    terms = _surrogate(ratio, advantages, clip_eps, clip_eps_high, clip_ratio_c)  # (B, T)
    loss = aggregate(terms.loss, mask, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, horizon=horizon)
    with torch.no_grad():
        clip_fraction = masked_mean(terms.clipped, mask)
        approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return PolicyLossOutput(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl)


_MAX_SEQ_LOG_RATIO = 20.0
"""Cap on Σ_t log ρ_t before exp: exp(20) ≈ 5e8 is far past any clip bound, and an inf ratio would turn the
zero gradient of the unchosen branch into NaN (inf · 0). verl's GSPO caps at 10."""


def sequence_clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    aggregation: Union[LossAggregation, str] = "token_mean",
    num_tokens: Optional[Union[Number, Tensor]] = None,
    num_seqs: Optional[Union[Number, Tensor]] = None,
    horizon: Optional[int] = None,
    clip_eps_high: Optional[float] = None,
    clip_ratio_c: Optional[float] = None,
) -> PolicyLossOutput:
    """R2M Eq. 2 per sequence: ℓ_i = max(−A_i ρ_i, −A_i clip(ρ_i, 1 − ε, 1 + ε_high)),
    ρ_i = π_θ(y_i|x_i)/π_old(y_i|x_i) = exp Σ_t m_it (log π − log π_old); loss = Σ_i ℓ_i / N_seq.

    Same signature as :func:`clipped_policy_loss` (so the two are interchangeable); ``aggregation``,
    ``num_tokens`` and ``horizon`` are not used: Eq. 2 is a mean over the n·K sequences (N_seq =
    ``num_seqs`` or B). ``advantages`` (B,) or (B, T) constant over each row's tokens (its masked mean
    is taken). ``clip_fraction`` is the share of sequences clipped; ``approx_kl`` is per token.
    """
    logprobs, old_logprobs = full_precision(logprobs), full_precision(old_logprobs)
    m = mask.to(logprobs.dtype)  # (B, T)
    adv = full_precision(advantages if advantages.dim() == 1 else masked_mean(advantages, m, dim=-1))  # (B,)
    log_ratio = apply_mask(logprobs - old_logprobs, m)  # (B, T)
    seq_log_ratio = log_ratio.sum(dim=-1).clamp(max=_MAX_SEQ_LOG_RATIO)  # (B,)
    terms = _surrogate(torch.exp(seq_log_ratio), adv, clip_eps, clip_eps_high, clip_ratio_c)  # (B,)
    has_tokens = (m.sum(dim=-1) > 0).to(m.dtype)  # (B,) an empty row contributes nothing
    n_seqs = logprobs.shape[0] if num_seqs is None else num_seqs
    loss = apply_mask(terms.loss, has_tokens).sum() / n_seqs
    with torch.no_grad():
        clip_fraction = masked_mean(terms.clipped, has_tokens)
        approx_kl = masked_mean(0.5 * (logprobs - old_logprobs) ** 2, m)
    return PolicyLossOutput(loss=loss, clip_fraction=clip_fraction, approx_kl=approx_kl)


PolicyLossFn = Callable[..., PolicyLossOutput]

POLICY_LOSSES: dict[RatioLevel, PolicyLossFn] = {
    RatioLevel.TOKEN: clipped_policy_loss,
    RatioLevel.SEQUENCE: sequence_clipped_policy_loss,
}
"""The clipped policy loss of each ``rl.ratio_level``; both take the same arguments."""


class ValueLossOutput(NamedTuple):
    """Aggregated clipped value loss, plus the detached local share of clipped tokens."""

    loss: Tensor
    clip_fraction: Tensor


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float,
    aggregation: Union[LossAggregation, str] = "token_mean",
    num_tokens: Optional[Union[Number, Tensor]] = None,
    num_seqs: Optional[Union[Number, Tensor]] = None,
    horizon: Optional[int] = None,
) -> ValueLossOutput:
    """PPO clipped value loss: ℓ_t = ½ max((V_t − R_t)², (V_t^clip − R_t)²),
    V_t^clip = V_t^old + clip(V_t − V_t^old, −ε, ε); all inputs (B, T), reduced with :func:`aggregate`.

    ``clip_fraction`` is the masked share of tokens where the clipped error is the larger one.
    """
    values, old_values, returns = full_precision(values), full_precision(old_values), full_precision(returns)
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # (B, T)
    err = (values - returns) ** 2  # (B, T)
    err_clipped = (values_clipped - returns) ** 2  # (B, T)
    per_token = 0.5 * torch.maximum(err, err_clipped)  # (B, T)
    loss = aggregate(per_token, mask, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, horizon=horizon)
    with torch.no_grad():
        clip_fraction = masked_mean((err_clipped > err).to(per_token.dtype), mask)
    return ValueLossOutput(loss=loss, clip_fraction=clip_fraction)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical softmax(logits): H = −Σ_v p_v log p_v, (B, T, V) → (B, T).

    Uses log_softmax (a logsumexp inside) for stability; −inf logits (masked vocab) contribute 0.
    """
    logp = F.log_softmax(full_precision(logits), dim=-1)  # (B, T, V)
    # a finite floor turns 0 · (−inf) = NaN into 0 · (very negative) = 0, in value and in gradient
    logp_floor = logp.clamp_min(torch.finfo(logp.dtype).min)  # (B, T, V)
    return -(logp.exp() * logp_floor).sum(dim=-1)  # (B, T)
