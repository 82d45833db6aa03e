"""Gold at several budgets, peak/final gold, the frontier band, the paired bootstrap and verdicts.json
(r2m_bench.frontier)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from r2m.errors import DataError
from r2m.eval.trajectory import trajectory
from r2m_bench.frontier import (
    Verdict,
    final_gold,
    frontier_band,
    gold_at_budgets,
    paired_bootstrap,
    peak_gold,
    verdict_of,
)
from r2m_bench.stats import paired_differences

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


def test_bootstrap_hand_worked_two_pairs():
    # d = (0.1, 0.3): a resample's mean is 0.1, 0.2 or 0.3 with probability 1/4, 1/2, 1/4, so the 2.5% and
    # 97.5% quantiles of many resamples are 0.1 and 0.3.
    r = paired_bootstrap({0: 0.7, 1: 0.9}, {0: 0.6, 1: 0.6}, resamples=4000)
    assert r.diff_mean == pytest.approx(0.2)
    assert r.ci95 == pytest.approx((0.1, 0.3))
    assert r.verdict is Verdict.BETTER and r.seeds == (0, 1) and r.dropped == ()


def test_bootstrap_finds_a_known_difference():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, size=10)  # the seeds differ a lot: only pairing shows the effect
    a = {s: float(base[s] + 0.07 + rng.normal(0, 0.02)) for s in range(10)}
    b = {s: float(base[s]) for s in range(10)}
    r = paired_bootstrap(a, b, resamples=2000, seed=1)
    assert r.diff_mean == pytest.approx(np.mean([a[s] - b[s] for s in range(10)]))
    assert 0 < r.ci95[0] < 0.07 < r.ci95[1] and r.verdict is Verdict.BETTER
    swapped = paired_bootstrap(b, a, resamples=2000, seed=1)
    assert swapped.verdict is Verdict.WORSE and swapped.diff_mean == pytest.approx(-r.diff_mean)


def test_bootstrap_finds_none_where_there_is_none():
    noise = [0.05, -0.04, 0.03, -0.05, 0.04, -0.03, 0.02, -0.02]  # sums to 0
    b = {s: 0.4 + 0.1 * s for s in range(8)}
    a = {s: b[s] + noise[s] for s in range(8)}
    r = paired_bootstrap(a, b, resamples=2000)
    assert r.diff_mean == pytest.approx(0.0, abs=1e-12)
    assert r.ci95[0] < 0 < r.ci95[1] and r.verdict is Verdict.NO_DIFFERENCE


def test_bootstrap_drops_and_counts_missing_pairs():
    a = {0: 0.5, 1: None, 2: 0.6, 3: float("nan"), 5: 0.7}
    b = {0: 0.4, 1: 0.3, 2: 0.5, 3: 0.2, 4: 0.1, 5: 0.6}
    assert paired_differences(a, b).dropped == (1, 3, 4)
    r = paired_bootstrap(a, b, resamples=500)
    assert r.seeds == (0, 2, 5) and r.dropped == (1, 3, 4)
    assert r.diff_mean == pytest.approx(0.1) and r.ci95 == pytest.approx((0.1, 0.1))


def test_bootstrap_too_few_pairs_and_reproducible():
    r = paired_bootstrap({0: 0.9, 1: None}, {0: 0.1, 1: 0.2})
    assert r.verdict is Verdict.TOO_FEW_PAIRS and math.isnan(r.diff_mean) and r.dropped == (1,)
    a, b = {s: 0.1 * s + 0.03 * (s % 3) for s in range(6)}, {s: 0.1 * s for s in range(6)}
    assert paired_bootstrap(a, b, resamples=300, seed=7) == paired_bootstrap(a, b, resamples=300, seed=7)
    assert paired_bootstrap(a, b, resamples=300, seed=7).ci95 != paired_bootstrap(a, b, resamples=300, seed=8).ci95
    with pytest.raises(DataError, match="resamples=0"):
        paired_bootstrap(a, b, resamples=0)


@pytest.mark.parametrize("lo, hi, verdict", [
    (0.01, 0.2, Verdict.BETTER), (-0.2, -0.01, Verdict.WORSE), (0.0, 0.2, Verdict.NO_DIFFERENCE),
    (-0.2, 0.0, Verdict.NO_DIFFERENCE), (-0.1, 0.1, Verdict.NO_DIFFERENCE), (1e-9, 1e-9, Verdict.BETTER),
])
def test_verdict_thresholds(lo, hi, verdict):
    assert verdict_of(lo, hi) is verdict
