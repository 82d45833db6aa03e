"""Matched-KL comparison of RL runs and paired verdicts over seeds.

On a run's trajectory (:class:`r2m.eval.trajectory.Trajectory`: gold against KL at its evaluation points) and
gold at a KL budget (:func:`r2m.eval.trajectory.gold_at_kl`):

* :func:`gold_at_budgets`; :func:`peak_gold` and :func:`final_gold`; :func:`frontier_band` (a method's mean curve
  over seeds, with a band);
* :func:`paired_bootstrap` -- over seeds shared by two arms, the mean paired difference A - B, its 95%
  percentile-bootstrap interval and a :class:`Verdict` (the alarm's validation reads it; the benchmark's
  verdicts and ``verdicts.json`` are :mod:`r2m_bench.stats`').
"""

from __future__ import annotations

import enum
from typing import Mapping, NamedTuple, Optional, Sequence

import torch

from r2m.errors import DataError
from r2m.eval.trajectory import BudgetGold, Trajectory, gold_at_kl
from r2m_bench.stats import paired_differences


def gold_at_budgets(traj: Trajectory, budgets: Sequence[float]) -> list[BudgetGold]:
    """:func:`gold_at_kl` at each budget, in the order given."""
    return [gold_at_kl(traj, float(b)) for b in budgets]


class TrajectoryPoint(NamedTuple):
    """One evaluation point of a trajectory."""

    index: int
    step: int
    kl: float
    gold: float


def _point(traj: Trajectory, i: int) -> TrajectoryPoint:
    return TrajectoryPoint(i, traj.steps[i], traj.kls[i], traj.golds[i])


def peak_gold(traj: Trajectory) -> TrajectoryPoint:
    """The point of highest gold, argmax_i g_i, with its KL and step; ties go to the earliest point."""
    best = max(range(len(traj.golds)), key=lambda i: (traj.golds[i], -i))
    return _point(traj, best)


def final_gold(traj: Trajectory) -> TrajectoryPoint:
    """The last evaluation point, g_{n-1}."""
    return _point(traj, len(traj.golds) - 1)


class BandPoint(NamedTuple):
    """The seeds' gold at one KL budget, over the runs that reach it."""

    budget: float
    mean: float
    """(1/n) sum_r gold_r(b) (NaN when n = 0)."""
    lo: float
    """min_r gold_r(b): the band is the seeds' range (NaN when n = 0)."""
    hi: float
    """max_r gold_r(b)."""
    n: int
    """Runs that reach b; the others are left out of this point (and counted by n)."""


def frontier_band(trajs: Sequence[Trajectory], budgets: Sequence[float]) -> list[BandPoint]:
    """A method's mean gold-vs-KL curve with a band, one point per budget: :func:`gold_at_kl` of each run
    (one per seed) at b, then mean, min and max over the runs that reach b."""
    out = []
    for b in budgets:
        golds = [r.gold for r in (gold_at_kl(t, float(b)) for t in trajs) if r.gold is not None]
        nan = float("nan")
        out.append(BandPoint(float(b), sum(golds) / len(golds), min(golds), max(golds), len(golds)) if golds
                   else BandPoint(float(b), nan, nan, nan, 0))
    return out


class Verdict(str, enum.Enum):
    """Reading of a paired-difference interval [lo, hi] of A - B."""

    BETTER = "better"
    """lo > 0: the whole interval is above 0."""
    WORSE = "worse"
    """hi < 0: the whole interval is below 0."""
    NO_DIFFERENCE = "no difference"
    """lo <= 0 <= hi: the interval contains 0."""
    TOO_FEW_PAIRS = "too few pairs"
    """Fewer complete pairs than ``min_pairs``: no interval is computed (not one of the three readings)."""


def verdict_of(lo: float, hi: float) -> Verdict:
    """BETTER when lo > 0, WORSE when hi < 0, else NO_DIFFERENCE (an end exactly at 0 contains 0)."""
    if lo > 0:
        return Verdict.BETTER
    if hi < 0:
        return Verdict.WORSE
    return Verdict.NO_DIFFERENCE


class PairedBootstrap(NamedTuple):
    """A paired comparison of arms A and B over shared seeds."""

    diff_mean: float
    """mean_s (a_s - b_s) over the complete pairs (NaN with too few pairs)."""
    ci95: tuple[float, float]
    """Percentile-bootstrap interval (lo, hi) of that mean at ``level`` (NaN, NaN with too few pairs)."""
    verdict: Verdict
    seeds: tuple[int, ...]
    """The seeds of the complete pairs, sorted."""
    dropped: tuple[int, ...]
    """Seeds dropped: in one arm only, or missing (None/NaN, e.g. "not reached") in either."""


def paired_bootstrap(a: Mapping[int, Optional[float]], b: Mapping[int, Optional[float]], *,
                     resamples: int = 10_000, seed: int = 0, level: float = 0.95,
                     min_pairs: int = 2) -> PairedBootstrap:
    """Mean paired difference of A - B over seeds, with a percentile-bootstrap interval and its verdict.

    With d_s = a_s - b_s on the n complete pairs: diff_mean = (1/n) sum_s d_s. Each of R resamples draws n
    seeds with replacement (a ``torch.Generator`` seeded with ``seed``, so the interval is reproducible) and
    takes their mean d*_r; ci95 = the (1-level)/2 and (1+level)/2 quantiles of {d*_r} (linear interpolation,
    torch.quantile). The verdict is :func:`verdict_of` (lo, hi). Seeds missing from either arm, or None/NaN
    there (a budget not reached), are dropped and returned in ``dropped``; with fewer than ``min_pairs``
    complete pairs the verdict is TOO_FEW_PAIRS (one pair gives a zero-width interval, not evidence).
    """
    if resamples < 1:
        raise DataError(f"paired_bootstrap: resamples={resamples}; expected >= 1")
    if not 0 < level < 1:
        raise DataError(f"paired_bootstrap: level={level}; expected 0 < level < 1")
    if min_pairs < 1:
        raise DataError(f"paired_bootstrap: min_pairs={min_pairs}; expected >= 1")
    diffs, dropped = paired_differences(a, b)
    seeds = tuple(diffs)
    if len(seeds) < min_pairs:
        nan = float("nan")
        return PairedBootstrap(nan, (nan, nan), Verdict.TOO_FEW_PAIRS, seeds, dropped)
    d = torch.tensor([diffs[s] for s in seeds], dtype=torch.float64)  # (n,)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, d.numel(), (resamples, d.numel()), generator=gen)  # (R, n)
    means = d[idx].mean(dim=1)  # (R,)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q).tolist()
    return PairedBootstrap(d.mean().item(), (lo, hi), verdict_of(lo, hi), seeds, dropped)
