"""Sequence-reward shaping before advantages: squashing, running normalisation and clipping.

Rewards are sequence-level scores, (B,) or (N, K); every function here keeps the input's shape.
:func:`scale_rewards` is pure; :class:`RunningMoments` keeps the only state (the running mean and
std of every reward seen), which :func:`normalize_rewards` updates and applies.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "RewardScaling",
    "scale_rewards",
    "MomentsOutput",
    "RunningMoments",
    "normalize_rewards",
]


class RewardScaling(str, Enum):
    """How raw reward-model scores are mapped before use."""

    NONE = "none"
    """The scores as they are."""
    SIGMOID_CENTERED = "sigmoid_centered"
    """σ(r) − 0.5 ∈ (−0.5, 0.5) (SER, Appendix C.3): bounds the reward so a few extreme RM scores
    cannot dominate the policy gradient, while keeping 0 at a neutral score."""


def scale_rewards(scores: Tensor, scaling: Union[RewardScaling, str]) -> Tensor:
    """Map sequence scores (B,) or (N, K) through ``scaling``; same shape out."""
    scaling = RewardScaling(scaling)
    if scaling is RewardScaling.NONE:
        return scores
    # σ(x) − ½ = ½·tanh(x/2) exactly; the tanh form keeps full relative precision near 0, where
    # subtracting ½ from σ(x) ≈ ½ would cancel most of the significant digits.
    return 0.5 * torch.tanh(0.5 * scores)


class MomentsOutput(NamedTuple):
    """Mean and unbiased std of one batch (for logging)."""

    mean: float
    std: float


class RunningMoments:
    """Running mean and std over every value passed to :meth:`update` (all batches together).

    Batches are merged with the parallel form of Welford's algorithm (Chan et al.), as TRL's
    ``RunningMoments`` does: it is exact (up to float64 rounding) and never stores past values.
    The running ``std`` is the UNBIASED one (Bessel's correction, divides by count − 1), matching
    ``torch.std`` of all values seen; until two values have been seen it stays 1.0, a neutral
    scale, because there is no spread to measure yet.
    """

    def __init__(self) -> None:
        self.mean: float = 0.0
        self.std: float = 1.0
        self.count: int = 0
        # Sum of squared deviations from the running mean (Welford's M2); var = m2 / (count − 1).
        self.m2: float = 0.0

    @torch.no_grad()
    def update(self, x: Tensor) -> MomentsOutput:
        """Fold every element of ``x`` into the running moments; return the batch's own moments."""
        if x.numel() == 0:
            raise ValueError("RunningMoments.update: got an empty tensor")
        # float64 for the batch sums: rewards are few, and float32 sums drift over long runs
        xs = x.detach().reshape(-1).to(torch.float64)  # (n,)
        n = xs.numel()
        batch_mean = xs.mean().item()
        batch_m2 = ((xs - batch_mean) ** 2).sum().item()

        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        # the cross term corrects both parts' deviations for the shift to the merged mean
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total
        if self.count >= 2:
            self.std = math.sqrt(self.m2 / (self.count - 1))
        # A single value has no spread: report 0 rather than torch's NaN for the batch.
        return MomentsOutput(mean=batch_mean, std=math.sqrt(batch_m2 / (n - 1)) if n >= 2 else 0.0)

    @property
    def var(self) -> float:
        """Unbiased variance of everything seen (1.0 before two values, like ``std``)."""
        return self.std**2

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "count": self.count, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = float(state["mean"])
        self.std = float(state["std"])
        self.count = int(state["count"])
        self.m2 = float(state["m2"])

    def __repr__(self) -> str:
        return f"RunningMoments(mean={self.mean!r}, std={self.std!r}, count={self.count!r})"


def normalize_rewards(scores: Tensor, moments: Optional[RunningMoments], clip: float,
                      eps: float = 1e-8) -> Tensor:
    """Running-normalise then clip sequence rewards (B,) or (N, K); same shape and dtype out.

    With ``moments``, it is first updated with this batch (so the batch counts towards its own
    statistics, as in TRL) and the scores become (x − μ) / max(σ, eps), μ and σ the running mean
    and unbiased std; the eps floor only guards a constant reward stream. Then, if ``clip`` > 0,
    the result is clamped to [−clip, clip]; ``clip`` = 0 turns clipping off.
    """
    if not (clip >= 0.0):
        raise ValueError(f"clip must be >= 0 (0 turns clipping off), got {clip!r}")
    out = scores
    if moments is not None:
        moments.update(scores)
        out = (scores - moments.mean) / max(moments.std, eps)
    if clip > 0.0:
        out = out.clamp(-clip, clip)
    return out
