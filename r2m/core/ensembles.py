"""Proxy rewards built from several scores: reward-model ensembles (Coste et al., 2023, "Reward Model Ensembles
Help Mitigate Overoptimization") and the calibration ladder's gold-mixed proxy.

Ensembles: M reward models score the same B responses, (M, B); each member is first put on one scale
(:func:`standardize`: mean 0, SD 1 on a fixed calibration set), so that a minimum or a variance compares members
and not their arbitrary offsets and scales. The reducers are pure functions registered under
:class:`~r2m.config.enums.EnsembleMode`, picked with :func:`combine_ensemble`:

    mean    R = (1/M) Σ_i R_i
    worst   R = min_i R_i                                         (worst-case optimisation, WCO)
    uwo     R = (1/M) Σ_i R_i − λ · (1/M) Σ_i (R_i − R̄)²          (uncertainty-weighted optimisation, UWO)

The gold-mixed proxy (:func:`gold_mixture`): (1 − λ)·RM + λ·gold, with gold standardised to the RM's scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from r2m.config.enums import EnsembleMode

__all__ = [
    "Moments",
    "moments",
    "standardize",
    "EnsembleParams",
    "ENSEMBLE_REDUCERS",
    "combine_ensemble",
    "gold_mixture",
]


class Moments(NamedTuple):
    """Location and scale of a score on a calibration set."""

    mean: float
    std: float
    """The population standard deviation (divide by n)."""


def moments(scores: Tensor) -> Moments:
    """Mean and population SD of ``scores`` (n,); refused when they are constant or not finite (no scale)."""
    x = scores.double()
    mean, std = x.mean().item(), x.std(unbiased=False).item()
    if not (torch.isfinite(x).all() and std > 0):
        raise ValueError(f"moments: the calibration scores must be finite and not all equal (mean {mean}, SD {std})")
    return Moments(mean, std)


def standardize(scores: Tensor, m: Moments) -> Tensor:
    """(scores − mean) / SD: (...) → (...), float32."""
    return ((scores.double() - m.mean) / m.std).float()


@dataclass(frozen=True)
class EnsembleParams:
    """Hyper-parameters of the reducers (each reads what it needs)."""

    uwo_lambda: float = 1.0
    """λ of UWO: the weight of the members' variance (in standardised units²)."""

    def __post_init__(self) -> None:
        if not self.uwo_lambda >= 0.0:
            raise ValueError(f"uwo_lambda must be >= 0, got {self.uwo_lambda!r}")


def ensemble_mean(scores: Tensor, params: EnsembleParams) -> Tensor:
    """(M, B) → (B,): the members' mean."""
    return scores.float().mean(0)


def ensemble_worst(scores: Tensor, params: EnsembleParams) -> Tensor:
    """(M, B) → (B,): the members' minimum (WCO)."""
    return scores.float().min(0).values


def ensemble_uwo(scores: Tensor, params: EnsembleParams) -> Tensor:
    """(M, B) → (B,): the mean minus λ times the members' population variance (UWO)."""
    s = scores.float()
    return s.mean(0) - params.uwo_lambda * s.var(0, unbiased=False)


ENSEMBLE_REDUCERS: dict[EnsembleMode, Callable[[Tensor, EnsembleParams], Tensor]] = {
    EnsembleMode.MEAN: ensemble_mean,
    EnsembleMode.WORST: ensemble_worst,
    EnsembleMode.UWO: ensemble_uwo,
}


def combine_ensemble(mode: EnsembleMode | str, scores: Tensor, params: EnsembleParams = EnsembleParams()) -> Tensor:
    """The ensemble reward of ``mode`` over the members' (standardised) scores (M, B) → (B,)."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"combine_ensemble: expected scores (M, B) with M >= 1, got {tuple(scores.shape)}")
    return ENSEMBLE_REDUCERS[EnsembleMode(mode)](scores, params)


def gold_mixture(rm: Tensor, gold: Tensor, lam: float, rm_moments: Moments, gold_moments: Moments) -> Tensor:
    """(1 − λ)·RM + λ·ĝ with ĝ = μ_RM + σ_RM·(gold − μ_gold)/σ_gold: gold on the RM's scale. (B,) → (B,).

    λ = 0 returns ``rm`` itself (bit-identical); λ = 1 is gold, rescaled to the RM's mean and SD."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"gold_mixture: λ must be in [0, 1], got {lam!r}")
    if lam == 0.0:
        return rm
    g = rm_moments.mean + rm_moments.std * (gold.double() - gold_moments.mean) / gold_moments.std
    return ((1.0 - lam) * rm.double() + lam * g).to(rm.dtype)
