"""Gold at several budgets, peak/final gold and the frontier band (r2m_bench.frontier)."""

from __future__ import annotations

import math

import pytest

from r2m.eval.trajectory import trajectory
from r2m_bench.frontier import final_gold, frontier_band, gold_at_budgets, peak_gold

# kl rises 0 -> 0.5; gold peaks at step 20 (0.7) then falls.
RUN = trajectory([0, 10, 20, 30], [0.0, 0.1, 0.3, 0.5], [0.2, 0.4, 0.7, 0.6])


def test_gold_at_budgets_in_order():
    assert [r.gold for r in gold_at_budgets(RUN, [0.2, 0.7])] == [pytest.approx(0.55), None]


def test_peak_and_final_gold():
    p = peak_gold(RUN)
    assert (p.index, p.step, p.kl, p.gold) == (2, 20, 0.3, 0.7)
    f = final_gold(RUN)
    assert (f.index, f.step, f.kl, f.gold) == (3, 30, 0.5, 0.6)
    tied = trajectory([0, 1, 2], [0.0, 0.1, 0.2], [0.5, 0.7, 0.7])
    assert peak_gold(tied).index == 1  # ties go to the earliest point


def test_frontier_band_hand_worked():
    other = trajectory([0, 10, 20], [0.0, 0.2, 0.4], [0.3, 0.5, 0.2])  # gold 0.5 at KL 0.2
    short = trajectory([0, 10], [0.0, 0.1], [0.25, 0.35])  # never reaches 0.2
    band = frontier_band([RUN, other, short], [0.1, 0.2, 0.6])
    # b = 0.1: RUN 0.4, other 0.3 + 0.5 * 0.2 = 0.4, short 0.35 -> mean 0.38333.
    assert band[0].n == 3 and band[0].mean == pytest.approx(1.15 / 3)
    assert (band[0].lo, band[0].hi) == pytest.approx((0.35, 0.4))
    # b = 0.2: RUN 0.55, other 0.5; short is left out and counted.
    assert band[1].n == 2 and band[1].mean == pytest.approx(0.525)
    assert (band[1].lo, band[1].hi) == pytest.approx((0.5, 0.55))
    assert band[2].n == 0 and math.isnan(band[2].mean)
