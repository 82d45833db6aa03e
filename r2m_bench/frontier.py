"""Matched-KL readings of RL runs: gold at budgets, peak and final gold, the frontier band over seeds.

On a run's trajectory (:class:`r2m.eval.trajectory.Trajectory`: gold against KL at its evaluation points) and
gold at a KL budget (:func:`r2m.eval.trajectory.gold_at_kl`):

* :func:`gold_at_budgets`; :func:`peak_gold` and :func:`final_gold`; :func:`frontier_band` (a method's mean curve
  over seeds, with a band).

Paired comparisons and their verdicts are :mod:`r2m_bench.stats`'.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from r2m.eval.trajectory import BudgetGold, Trajectory, gold_at_kl


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
