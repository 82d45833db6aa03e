"""A run's gold reward against KL(pi || pi_ref): its evaluation points and the gold at a KL budget.

A run's evaluation points, in step order, trace gold reward against KL: the trajectory
``(step_i, kl_i, gold_i)``, i = 0..n-1. :func:`eval_trajectory` reads it from a run's logged evaluation rows and
:func:`gold_at_kl` interpolates the gold at a fixed KL budget b, piecewise-linear in KL between consecutive
points, at the first crossing of b along the trajectory (see its docstring for non-monotone KL and "not
reached"). The demo's ``gold@KL`` column and the benchmark's matched-KL comparisons read it.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional, Sequence

from r2m.errors import DataError


class Trajectory(NamedTuple):
    """One run's evaluation points in step order (validated by :func:`trajectory`)."""

    steps: tuple[int, ...]
    kls: tuple[float, ...]
    golds: tuple[float, ...]


def trajectory(steps: Sequence[int], kls: Sequence[float], golds: Sequence[float]) -> Trajectory:
    """Check and freeze a run's (step, kl, gold) points: equal non-zero lengths, steps strictly increasing,
    every value finite. Raises :class:`DataError` naming the argument and the index."""
    if not (len(steps) == len(kls) == len(golds)):
        raise DataError(f"trajectory: steps, kls and golds have lengths {len(steps)}, {len(kls)}, {len(golds)}; "
                        "expected one (kl, gold) per step")
    if not steps:
        raise DataError("trajectory: no evaluation points")
    for name, values in (("kls", kls), ("golds", golds)):
        for i, v in enumerate(values):
            if not math.isfinite(float(v)):
                raise DataError(f"trajectory: {name}[{i}] is {v!r}; expected a finite number")
    for i, st in enumerate(steps):
        if isinstance(st, bool) or int(st) != st:
            raise DataError(f"trajectory: steps[{i}] is {st!r}; expected an integer step")
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise DataError(f"trajectory: steps[{i}]={steps[i]} after steps[{i - 1}]={steps[i - 1]}; "
                            "expected strictly increasing steps (points in step order)")
    return Trajectory(tuple(int(s) for s in steps), tuple(float(k) for k in kls), tuple(float(g) for g in golds))


def eval_trajectory(rows: Sequence[Mapping[str, float]]) -> Trajectory:
    """The trajectory of a run's logged rows: those with ``eval/gold``, read as (``step``, ``eval/kl``,
    ``eval/gold``) and checked by :func:`trajectory`."""
    evals = [r for r in rows if "eval/gold" in r]
    return trajectory([int(r["step"]) for r in evals], [r["eval/kl"] for r in evals], [r["eval/gold"] for r in evals])


class BudgetGold(NamedTuple):
    """Gold at one KL budget; ``gold``, ``step`` and ``segment`` are None when the budget is not reached."""

    budget: float
    gold: Optional[float]
    """g_i + f (g_{i+1} - g_i), f = (b - kl_i) / (kl_{i+1} - kl_i), on the first crossing segment i."""
    step: Optional[float]
    """The step interpolated with the same f (a float: a crossing lies between evaluations)."""
    segment: Optional[int]
    """i: the crossing lies on [point i, point i+1] (i = 0 and f = 0 when kl_0 = b)."""


def gold_at_kl(traj: Trajectory, budget: float) -> BudgetGold:
    """Gold at KL budget b, linear in KL on the first segment of the trajectory that crosses b.

    The budget is reached at the first i with kl_i < b <= kl_{i+1} (or at point 0 when kl_0 = b), and

        gold(b) = g_i + (b - kl_i) / (kl_{i+1} - kl_i) * (g_{i+1} - g_i).

    Non-monotone KL: only the first crossing from below counts; a later dip under b and a second crossing
    are ignored, because the first crossing is where a run that stops at budget b would have stopped.
    Not reached (None): the KL never gets to b; and also when kl_0 > b, since the run starts past the
    budget and no point below it brackets the crossing (nothing is extrapolated).
    """
    if not math.isfinite(budget) or budget < 0:
        raise DataError(f"gold_at_kl: budget={budget!r}; expected a finite KL >= 0")
    k, g, s = traj.kls, traj.golds, traj.steps
    if k[0] == budget:
        return BudgetGold(budget, g[0], float(s[0]), 0)
    if k[0] > budget:
        return BudgetGold(budget, None, None, None)
    for i in range(len(k) - 1):
        if k[i] < budget <= k[i + 1]:
            f = (budget - k[i]) / (k[i + 1] - k[i])
            return BudgetGold(budget, g[i] + f * (g[i + 1] - g[i]), s[i] + f * (s[i + 1] - s[i]), i)
    return BudgetGold(budget, None, None, None)
