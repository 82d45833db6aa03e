"""The paired t-test's power, the smallest detectable effect and the evaluation-noise split (r2m_bench.power)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from r2m.errors import DataError
from r2m_bench.power import EvalNoise, eval_noise, min_detectable_effect, seeds_needed, t_test_power
from r2m_bench.stats import decision_rates


def test_power_at_zero_effect_is_alpha():
    for n in (2, 5, 10):
        assert t_test_power(0.0, 0.3, n) == pytest.approx(0.05)
        assert t_test_power(0.0, 0.3, n, alpha=0.1) == pytest.approx(0.1)


def test_min_detectable_effect_hand_worked():
    # At n = 5 the textbook approximation is (t_{0.975,4} + t_{0.8,4}) / √5 = (2.776445 + 0.940965) / 2.236068
    # = 1.662476 SDs; the exact noncentral-t root is 1.2% above it.
    approx = (2.776445 + 0.940965) / math.sqrt(5)
    mde = min_detectable_effect(1.0, 5)
    assert approx == pytest.approx(1.662476, abs=1e-6)
    assert 1.0 < mde / approx < 1.02
    assert t_test_power(mde, 1.0, 5) == pytest.approx(0.8, abs=1e-9)
    # Large n: the normal approximation (z_{0.975} + z_{0.8}) · σ / √n = 2.801585 σ / √n.
    assert min_detectable_effect(1.0, 10_000) == pytest.approx(2.801585 / 100, rel=2e-3)
    # Linear in the SD: the audit's 0.015-0.035 at 5 seeds means an SD of paired differences of about 0.009-0.021.
    assert min_detectable_effect(0.02, 5) == pytest.approx(0.02 * mde)
    assert min_detectable_effect(1.0, 2) > 10  # 2 pairs: df = 1, t_{0.975} = 12.7


def test_min_detectable_effect_is_detected_in_simulation():
    n = 10
    effect_se = min_detectable_effect(1.0, n) * math.sqrt(n)  # in standard errors of the mean (σ = 1)
    assert decision_rates(n, 4000, "normal", seed=11, effect_se=effect_se).decided == pytest.approx(0.8, abs=0.025)


def test_seeds_needed():
    # MDE(n = 10) = 0.996 SD < 1 < MDE(n = 9): a 1-SD effect needs 10 pairs.
    assert min_detectable_effect(1.0, 9) > 1.0 > min_detectable_effect(1.0, 10)
    assert seeds_needed(1.0, 1.0) == 10
    assert seeds_needed(0.02, 0.02) == 10
    with pytest.raises(DataError, match="more than 20 pairs"):
        seeds_needed(1.0, 0.1, max_n=20)
    with pytest.raises(DataError, match="power"):
        min_detectable_effect(1.0, 5, power=0.04)
    with pytest.raises(DataError, match="n=1"):
        t_test_power(0.1, 1.0, 1)


def test_eval_noise_hand_worked_one_cell_per_seed():
    # Seed 0: [1, 3], mean 2, s² = 2, noise 2 / 2 = 1; seed 1: [5, 7], mean 6, noise 1. Var of the means (ddof 1)
    # = 8; seed-to-seed spread 8 - 1 = 7; ratio √(1/7) = 0.378; noise share 1/8.
    r = eval_noise([1.0, 3.0, 5.0, 7.0], [0, 0, 1, 1])
    assert r == EvalNoise(1.0, 7.0, 2.0, 2)
    assert r.ratio == pytest.approx(math.sqrt(1 / 7)) and r.noise_share == pytest.approx(0.125)
    # Values per point for ratio 0.25: 2 · 1 / (0.0625 · 7) = 4.571.
    assert r.samples_for(0.25) == pytest.approx(2 / (0.0625 * 7))


def test_eval_noise_hand_worked_with_prompts():
    # Seed 0: prompt a [1, 3] (s² 2), prompt b [2, 2] (s² 0), mean 2, noise (2·2 + 2·0) / 4² = 0.25.
    # Seed 1: a [4, 6] (s² 2), b [6, 8] (s² 2), mean 6, noise (2·2 + 2·2) / 16 = 0.5. Mean noise 0.375;
    # Var of the means 8; spread 7.625.
    values = [1.0, 3.0, 2.0, 2.0, 4.0, 6.0, 6.0, 8.0]
    r = eval_noise(values, [0] * 4 + [1] * 4, ["a", "a", "b", "b"] * 2)
    assert r.noise_var == pytest.approx(0.375) and r.seed_var == pytest.approx(7.625) and r.samples == 4.0
    # Without prompts the prompt-to-prompt spread counts as noise too: seed 0 [1, 3, 2, 2] s² = 2/3 -> 1/6;
    # seed 1 [4, 6, 6, 8] s² = 8/3 -> 2/3.
    assert eval_noise(values, [0] * 4 + [1] * 4).noise_var == pytest.approx((1 / 6 + 2 / 3) / 2)


def test_eval_noise_recovers_a_simulated_split():
    # 200 seeds, 64 fixed prompts, 4 samples each: x = a_seed + b_prompt + e; SD(a) = 0.05, SD(b) = 0.3, SD(e) = 0.3.
    rng = np.random.default_rng(0)
    s, p, k = 200, 64, 4
    a = rng.normal(0, 0.05, (s, 1, 1))
    x = (a + rng.normal(0, 0.3, (1, p, 1)) + rng.normal(0, 0.3, (s, p, k))).ravel()
    seeds, prompts = np.repeat(np.arange(s), p * k), np.tile(np.repeat(np.arange(p), k), s)
    r = eval_noise(x, seeds, prompts)
    assert r.noise_var == pytest.approx(0.09 / (p * k), rel=0.03)  # 0.000352
    spread = float(np.var(a, ddof=1))  # the drawn seeds' own spread (0.0025 in expectation)
    assert r.seed_var == pytest.approx(spread, abs=4e-4)  # the noise's estimation error: about 1.5e-4
    assert r.ratio == pytest.approx(math.sqrt(0.09 / (p * k) / spread), rel=0.1)
    assert eval_noise(x, seeds).noise_var > 1.8 * r.noise_var  # prompts redrawn: b's spread is noise too


def test_eval_noise_names_bad_input():
    with pytest.raises(DataError, match="expected at least 2"):
        eval_noise([1.0, 2.0], [0, 0])
    with pytest.raises(DataError, match="seed 1, prompt 'b': 1 value"):
        eval_noise([1.0, 2.0, 3.0, 4.0, 5.0], [0, 0, 1, 1, 1], ["a", "a", "a", "a", "b"])
    with pytest.raises(DataError, match="3 values, 2 seed labels"):
        eval_noise([1.0, 2.0, 3.0], [0, 1])
    assert eval_noise([1.0, 3.0, 1.0, 3.0], [0, 0, 1, 1]).ratio == math.inf  # no spread left: inf, not an error


def test_power_where_the_lower_tail_underflows():
    # df = 1, λ = 8: scipy's nct.cdf(-t_c) gives NaN here (scipy 1.17); the power uses P(T'_{-λ} > t_c) instead.
    df, lam = 1, 8.0
    tc = stats.t.ppf(0.975, df)
    power = t_test_power(lam / math.sqrt(2), 1.0, 2)
    assert math.isfinite(power) and power == pytest.approx(stats.nct.sf(tc, df, lam) + stats.nct.sf(tc, df, -lam))
    assert power == pytest.approx(0.4698, abs=1e-4)
