"""SER's pure decision logic: score calibration, learning status (Eq. 2-3), data filters (Eq. 4), the loss (Eq. 5).

Everything here works on score tensors and numbers, with no model, so that each rule can be tested on
hand-made inputs.
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple, Optional, Sequence

import torch

from r2m.config.enums import Calibration, KeepLoop, PairLoss
from r2m.core.losses import bradley_terry_loss, margin_pairwise_loss

# ---------------------------------------------------------------------------------------------
# Scores -> probabilities comparable across loops and seeds
# ---------------------------------------------------------------------------------------------


class ScoreCalibration(NamedTuple):
    """p = sigmoid((score - centre) / scale): what Eq. 2-4 threshold, for one RM (fitted on its D_val scores)."""

    centre: float
    """Subtracted from every raw score (0 for ``calibration=sigmoid``)."""
    scale: float
    """Divides the centred score (1 for ``sigmoid`` and ``median``; inf: the RM ranks D_val no better than chance)."""

    def probs(self, scores: torch.Tensor) -> torch.Tensor:
        """(N,) raw scores -> (N,) probabilities in (0, 1); all 0.5 when ``scale`` is inf."""
        return torch.sigmoid((scores.double() - self.centre) / self.scale).to(scores.dtype)


def platt_scale(diffs: torch.Tensor, iters: int = 200) -> float:
    """Temperature T of the pairwise probability sigmoid(d / T), fitted to labelled pairs (Platt scaling).

    ``diffs`` (N,) are score(chosen) - score(rejected). T maximises the likelihood of the labels with
    Platt's smoothed target t = (N + 1) / (N + 2) for every pair, which keeps T finite when every pair is
    ordered right. The loss is convex in beta = 1 / T, with derivative g(beta) = mean(d * (sigmoid(beta d) - t))
    increasing from g(0) = mean(d) (1/2 - t): when mean(d) <= 0 the RM is no better than chance and T is
    inf (every probability 0.5); otherwise beta is found by bisection. Hand check: N pairs all with |d| = D,
    k of them right, give sigmoid(D / T) = (k t + (N - k)(1 - t)) / N.
    """
    d = diffs.double().flatten()  # (N,)
    n = d.numel()
    if n == 0 or d.mean().item() <= 0:
        return math.inf
    t = (n + 1) / (n + 2)

    def grad(beta: float) -> float:
        return (d * (torch.sigmoid(beta * d) - t)).mean().item()

    lo, hi = 0.0, 1.0 / d.abs().max().item()
    while grad(hi) < 0:  # finite: g(beta) -> mean(|d| (1 - t)) > 0 as beta grows
        lo, hi = hi, 2 * hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if grad(mid) < 0 else (lo, mid)
    return 1.0 / (0.5 * (lo + hi))


def calibrate(chosen: torch.Tensor, rejected: torch.Tensor, mode: Calibration) -> ScoreCalibration:
    """The calibration of ``mode`` from the raw D_val scores (V,) of the chosen and the rejected answers.

    ``sigmoid``: sigmoid(score), the pre-calibration behaviour (depends on BT's free offset and spread).
    ``median``: centred on the median of the 2V D_val scores (removes the offset, not the spread).
    ``platt``: centred on that median and divided by :func:`platt_scale` of the D_val pairs, so that
    sigmoid(p-logit difference) is the calibrated probability that one answer beats the other, and p itself
    the probability that the answer beats a median answer. Invariant to any score map a * s + b with a > 0.
    """
    mode = Calibration(mode)
    if mode is Calibration.SIGMOID:
        return ScoreCalibration(0.0, 1.0)
    both = torch.cat([chosen, rejected]).double()  # (2V,)
    centre = both.quantile(0.5).item() if both.numel() else 0.0  # the mean of the two middle values when even
    if mode is Calibration.MEDIAN:
        return ScoreCalibration(centre, 1.0)
    return ScoreCalibration(centre, platt_scale(chosen.double() - rejected.double()))


# ---------------------------------------------------------------------------------------------
# Learning status (SER Section 3.1, Eq. 2-3)
# ---------------------------------------------------------------------------------------------


class LearningStatus(str, enum.Enum):
    """What the RM is ready to learn next (Eq. 3)."""

    STATUS1 = "status1"
    """It separates clearly good from clearly bad answers: train on such pairs."""
    STATUS2 = "status2"
    """Its scores spread pairs apart on average: train on pairs with a large score gap."""
    STOP = "stop"
    """Neither: self-training ends."""


class StatusEvidence(NamedTuple):
    """What the learning-status rule decides on, measured on D_val with the current RM."""

    confident: int
    """Pairs with p1 > tau_high and p2 < tau_low (the chosen answer confidently good, the other confidently bad)."""
    delta_p: float
    """Eq. 2: mean |p1 - p2| over the pairs (NaN for no pairs)."""
    n: int = 0
    """Validation pairs."""
    previous: Optional[LearningStatus] = None
    """Status of the loop that made the current RM; None for the seed RM (Loop 0)."""
    gain: float = float("nan")
    """Validation-accuracy gain of that loop over the loop before it (NaN for the seed RM)."""


class StatusDecision(NamedTuple):
    status: LearningStatus
    reason: str
    """Which clause of the rule fired, with the numbers it compared (logged with the loop)."""


def _confident(p_good: torch.Tensor, p_bad: torch.Tensor, tau_high: float, tau_low: float) -> torch.Tensor:
    return (p_good > tau_high) & (p_bad < tau_low)  # (N,)


def status_evidence(p1: torch.Tensor, p2: torch.Tensor, tau_high: float, tau_low: float,
                    previous: Optional[LearningStatus] = None, gain: float = float("nan")) -> StatusEvidence:
    """The evidence for :func:`learning_status` (SER Eq. 2: Delta_p = mean |p1 - p2|, and the confident pairs of
    Eq. 3); ``p1``, ``p2`` (N,) probabilities, p1 the chosen answer's."""
    confident = int(_confident(p1, p2, tau_high, tau_low).sum())
    delta_p = (p1 - p2).abs().mean().item() if p1.numel() else float("nan")
    return StatusEvidence(confident, delta_p, int(p1.numel()), previous, gain)


def learning_status(ev: StatusEvidence, tau_delta: float, min_status1: int, marginal_gain: float) -> StatusDecision:
    """The status of the next loop (SER Eq. 3 and Section 3.1), from D_val evidence ``ev``.

    The rule, in order:
    1. After a Status-2 loop: Status 2 while Delta_p >= tau_delta, else STOP (no return to Status 1).
    2. Status 1 when at least ``min_status1`` validation pairs are confidently right, unless the last loop
       was a Status-1 loop whose validation-accuracy gain was marginal (<= ``marginal_gain``): "when
       improvements from Status 1 are marginal, we shift to Status 2".
    3. Otherwise Status 2 when Delta_p >= tau_delta (also the case order of Eq. 3 when too few pairs are confident).
    4. Otherwise STOP.
    A confidently *wrong* pair does not count towards Status 1 (on D_val the labels are known); Delta_p
    is unsigned, as Eq. 2 defines it. NaN Delta_p (no pairs) compares False: STOP.
    """
    reach = f"delta_p {ev.delta_p:.3f} {'>=' if ev.delta_p >= tau_delta else '<'} tau_delta {tau_delta}"
    if ev.previous is LearningStatus.STATUS2:
        status = LearningStatus.STATUS2 if ev.delta_p >= tau_delta else LearningStatus.STOP
        return StatusDecision(status, f"after a status2 loop: {reach}")
    marginal = ev.previous is LearningStatus.STATUS1 and not ev.gain > marginal_gain
    if marginal:
        why = f"status1 gain {ev.gain:+.4f} <= marginal_gain {marginal_gain}: shift to status2; "
    elif ev.confident >= min_status1:
        gain = "" if ev.previous is None else f", last status1 gain {ev.gain:+.4f} > marginal_gain {marginal_gain}"
        return StatusDecision(LearningStatus.STATUS1,
                              f"{ev.confident}/{ev.n} confident >= min_status1 {min_status1}{gain}")
    else:
        why = f"{ev.confident}/{ev.n} confident < min_status1 {min_status1}; "
    status = LearningStatus.STATUS2 if ev.delta_p >= tau_delta else LearningStatus.STOP
    return StatusDecision(status, why + reach)


# ---------------------------------------------------------------------------------------------
# Data filters (Eq. 4) and the pairwise loss (Eq. 5)
# ---------------------------------------------------------------------------------------------


class Selection(NamedTuple):
    """Self-labelled pairs kept by a filter."""

    index: torch.Tensor
    """(K,) long: positions of the kept pairs."""
    first_is_chosen: torch.Tensor
    """(K,) bool: answer 1 scored higher, so it is the pseudo-chosen one."""


def _select(keep: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> Selection:
    index = keep.nonzero().flatten()  # (K,)
    return Selection(index, s1[index] > s2[index])


def filter_pairs(s1: torch.Tensor, s2: torch.Tensor, status: LearningStatus, tau_high: float, tau_low: float,
                 delta: float) -> Selection:
    """SER Eq. 4 on probabilities ``s1``, ``s2`` (N,) of the two answers of each unlabelled pair.

    Status 1 keeps pairs with one answer above tau_high and the other below tau_low (either order);
    Status 2 keeps pairs with |s1 - s2| > delta; STOP keeps nothing. Kept pairs are oriented so that
    the higher-scored answer is the chosen one.
    """
    status = LearningStatus(status)
    if status is LearningStatus.STATUS1:
        keep = _confident(s1, s2, tau_high, tau_low) | _confident(s2, s1, tau_high, tau_low)  # (N,)
    elif status is LearningStatus.STATUS2:
        keep = (s1 - s2).abs() > delta  # (N,)
    else:
        keep = torch.zeros_like(s1, dtype=torch.bool)
    return _select(keep, s1, s2)


def release_filter(s1: torch.Tensor, s2: torch.Tensor, tau_high: float, tau_low: float, delta: float) -> Selection:
    """The public scripts' filter (``ser.variant=release``): no status, both Eq. 4 rules joined by OR.

    A pair is kept when s1 > tau_high and s2 < tau_low, or s1 - s2 > delta, or the mirror of either
    (the pair swapped); the higher-scored answer becomes the chosen one.
    """
    forward = _confident(s1, s2, tau_high, tau_low) | (s1 - s2 > delta)  # (N,) answer 1 wins
    mirrored = _confident(s2, s1, tau_high, tau_low) | (s2 - s1 > delta)  # (N,) answer 2 wins
    return _select(forward | mirrored, s1, s2)


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, loss: PairLoss, margin: float) -> torch.Tensor:
    """SER's pairwise loss on raw RM scores (N,): the SER Eq. 5 hinge on the sigmoid scores, or log-sigmoid."""
    if PairLoss(loss) is PairLoss.HINGE:
        # Eq. 5 compares RM(Q, A) as Eq. 4 does: sigmoid-normalised into (0, 1) (SER App. C.3).
        return margin_pairwise_loss(torch.sigmoid(chosen), torch.sigmoid(rejected), margin)
    return bradley_terry_loss(chosen, rejected)


# ---------------------------------------------------------------------------------------------
# Which loop's RM is kept
# ---------------------------------------------------------------------------------------------


class Kept(NamedTuple):
    index: int
    """Position in the history (the loop number: loop k is row k)."""
    reason: str


def kept_loop(val_acc: Sequence[float], keep: KeepLoop, ended: str) -> Kept:
    """The loop whose RM is SER's result (Table 1's SER row and the PPO stage's RM).

    ``last``: the last completed loop (the paper's converged RM); ``best_val``: the highest validation
    accuracy, the earliest loop on ties (the fewest self-labelling rounds). ``ended`` says why the loop ended.
    """
    last = len(val_acc) - 1
    if KeepLoop(keep) is KeepLoop.LAST:
        return Kept(last, f"the last completed loop (ser.keep=last; the loop ended: {ended})")
    best = max(range(len(val_acc)), key=lambda i: (val_acc[i], -i))
    return Kept(best, f"the highest validation accuracy, {val_acc[best]:.3f} (ser.keep=best_val, earliest on ties; "
                      f"the loop ended: {ended} at loop {last})")
