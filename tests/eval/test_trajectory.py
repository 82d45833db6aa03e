"""A run's gold-vs-KL trajectory and the gold at a KL budget (r2m.eval.trajectory), with hand-worked values."""

from __future__ import annotations

import numpy as np
import pytest

from r2m.errors import DataError
from r2m.eval.trajectory import BudgetGold, eval_trajectory, gold_at_kl, trajectory

# kl rises 0 -> 0.5; gold peaks at step 20 (0.7) then falls.
RUN = trajectory([0, 10, 20, 30], [0.0, 0.1, 0.3, 0.5], [0.2, 0.4, 0.7, 0.6])


def test_gold_at_kl_hand_worked():
    # b = 0.2 on segment 1: f = (0.2 - 0.1) / (0.3 - 0.1) = 0.5; gold = 0.4 + 0.5 * 0.3 = 0.55; step 15.
    r = gold_at_kl(RUN, 0.2)
    assert r.segment == 1 and r.gold == pytest.approx(0.55) and r.step == pytest.approx(15.0)
    # b = 0.45 on segment 2: f = 0.75; gold = 0.7 + 0.75 * (0.6 - 0.7) = 0.625; step 27.5.
    r = gold_at_kl(RUN, 0.45)
    assert r.segment == 2 and r.gold == pytest.approx(0.625) and r.step == pytest.approx(27.5)
    # A budget on an evaluation point takes that point's gold (the segment's end, f = 1).
    assert gold_at_kl(RUN, 0.1).gold == pytest.approx(0.4) and gold_at_kl(RUN, 0.1).step == pytest.approx(10)
    assert gold_at_kl(RUN, 0.0) == BudgetGold(0.0, 0.2, 0.0, 0)


def test_gold_at_kl_not_reached():
    assert gold_at_kl(RUN, 0.7) == BudgetGold(0.7, None, None, None)
    # A run that starts past the budget has no point below it: nothing is extrapolated.
    starts_high = trajectory([0, 5], [0.2, 0.3], [0.5, 0.6])
    assert gold_at_kl(starts_high, 0.1).gold is None


def test_gold_at_kl_non_monotone_takes_the_first_crossing():
    run = trajectory([0, 1, 2, 3, 4], [0.0, 0.4, 0.2, 0.1, 0.6], [0.3, 0.7, 0.5, 0.35, 0.9])
    # b = 0.3: first crossing on segment 0, f = 0.75 -> 0.3 + 0.75 * 0.4 = 0.6 (the later crossing on
    # segment 3 would give 0.35 + 0.4 * 0.55 = 0.57 and is ignored).
    r = gold_at_kl(run, 0.3)
    assert r.segment == 0 and r.gold == pytest.approx(0.6) and r.step == pytest.approx(0.75)
    # b = 0.5 is first reached on segment 3 (the KL peaked at 0.4 before): f = 0.8 -> 0.35 + 0.8 * 0.55.
    r = gold_at_kl(run, 0.5)
    assert r.segment == 3 and r.gold == pytest.approx(0.79) and r.step == pytest.approx(3.8)


def test_gold_at_kl_matches_numpy_interp_on_monotone_runs():
    rng = np.random.default_rng(3)
    for _ in range(20):
        kls = np.cumsum(rng.uniform(0.01, 0.2, size=7))
        golds = rng.uniform(-1, 1, size=7)
        run = trajectory(list(range(0, 70, 10)), kls.tolist(), golds.tolist())
        for b in rng.uniform(kls[0], kls[-1], size=5):
            assert gold_at_kl(run, float(b)).gold == pytest.approx(float(np.interp(b, kls, golds)), abs=1e-12)


@pytest.mark.parametrize("args, fragment", [
    (([0, 1], [0.0], [0.1, 0.2]), "lengths 2, 1, 2"),
    (([], [], []), "no evaluation points"),
    (([0, 2, 1], [0.0, 0.1, 0.2], [0.1, 0.2, 0.3]), "steps[2]=1"),
    (([0, 1], [0.0, float("nan")], [0.1, 0.2]), "kls[1]"),
    (([0, 1], [0.0, 0.1], [0.1, float("inf")]), "golds[1]"),
    (([0, 1.5], [0.0, 0.1], [0.1, 0.2]), "steps[1] is 1.5"),
])
def test_trajectory_refuses_bad_points(args, fragment):
    with pytest.raises(DataError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        trajectory(*args)


def test_eval_trajectory_reads_only_the_evaluation_rows() -> None:
    rows = [{"step": 0, "eval/kl": 0, "eval/gold": 0.7}, {"step": 1, "kl": 0.3, "reward": 0.2},
            {"step": 2, "eval/kl": 0.05, "eval/gold": 0.8, "loss": 1.0}]
    traj = eval_trajectory(rows)
    assert traj == trajectory([0, 2], [0.0, 0.05], [0.7, 0.8])
    assert isinstance(traj.kls[0], float)
    with pytest.raises(DataError, match="no evaluation points"):
        eval_trajectory([{"step": 1, "kl": 0.3}])
