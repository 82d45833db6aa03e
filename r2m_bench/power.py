"""How many seeds and evaluation samples a paired comparison needs: the paired t-test's power and smallest
detectable effect (exact, noncentral t), and the split of an evaluation point's variance into its own sampling noise
and the seed-to-seed spread."""

from __future__ import annotations

import math
from typing import Hashable, NamedTuple, Optional, Sequence

import numpy as np
from scipy import optimize, stats

from r2m.errors import DataError
from r2m_bench.stats import ALPHA


def _power(lam: float, df: int, alpha: float) -> float:
    tc = stats.t.ppf(1 - alpha / 2, df)
    # P(T'_λ < -t_c) = P(T'_{-λ} > t_c): scipy's nct.cdf returns NaN far in the lower tail, its sf does not.
    return float(stats.nct.sf(tc, df, lam) + stats.nct.sf(tc, df, -lam))


def t_test_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """The probability that the two-sided paired t-test at ``alpha`` rejects, at a true mean difference
    ``effect`` with differences of SD ``sd`` over n pairs. With df = n - 1, t_c = t_{1-α/2, df} and the
    noncentrality λ = effect · √n / sd (T' noncentral t):

        power = P(T'_{df,λ} > t_c) + P(T'_{df,λ} < -t_c).
    """
    if n < 2 or not sd > 0 or not 0 < alpha < 1:
        raise DataError(f"t_test_power: n={n}, sd={sd}, alpha={alpha}; expected n >= 2, sd > 0, 0 < alpha < 1")
    return _power(effect * math.sqrt(n) / sd, n - 1, alpha)


def min_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true difference δ > 0 that the two-sided paired t-test at ``alpha`` detects with probability
    ``power`` over n pairs of SD ``sd``: exact in the noncentral t, δ = λ* · sd / √n with λ* the root of
    :func:`t_test_power` = power (brentq). The textbook approximation (t_{1-α/2, n-1} + t_{power, n-1}) · sd / √n
    is smaller: by 16% at n = 2, 1.2% at n = 5, 0.1% at n = 10."""
    if not alpha < power < 1:
        raise DataError(f"min_detectable_effect: power={power} with alpha={alpha}; expected alpha < power < 1")
    t_test_power(0.0, sd, n, alpha)  # validates n, sd, alpha
    hi = 1.0
    while _power(hi, n - 1, alpha) < power:  # bracket the root: power rises from alpha (λ = 0) towards 1
        hi *= 2
    lam = optimize.brentq(lambda x: _power(x, n - 1, alpha) - power, 0.0, hi, xtol=1e-12)
    return float(lam * sd / math.sqrt(n))


def seeds_needed(sd: float, effect: float, alpha: float = ALPHA, power: float = 0.8, max_n: int = 1000) -> int:
    """The fewest pairs n >= 2 at which the paired t-test detects ``effect`` with probability ``power``."""
    if not effect > 0:
        raise DataError(f"seeds_needed: effect={effect}; expected > 0")
    for n in range(2, max_n + 1):
        if t_test_power(effect, sd, n, alpha) >= power:
            return n
    raise DataError(f"seeds_needed: effect {effect} with sd {sd} needs more than {max_n} pairs")


class EvalNoise(NamedTuple):
    """An evaluation point's own noise against the seed-to-seed spread of what it measures."""

    noise_var: float
    """Mean over seeds of Var(x̄_s | the policy) = Σ_c n_c s²_c / n_s² (c: the seed's cells)."""
    seed_var: float
    """Var_s(x̄_s) (ddof 1) - noise_var, floored at 0: the spread of the noise-free evaluation across seeds."""
    samples: float
    """Mean values per evaluation point, n_s."""
    seeds: int

    @property
    def ratio(self) -> float:
        """√(noise_var / seed_var): the point's noise SD per seed-to-seed SD (inf when seed_var = 0)."""
        return math.sqrt(self.noise_var / self.seed_var) if self.seed_var > 0 else math.inf

    @property
    def noise_share(self) -> float:
        """noise_var / (noise_var + seed_var): the share of the points' variance across seeds that is noise."""
        total = self.noise_var + self.seed_var
        return self.noise_var / total if total > 0 else math.nan

    def samples_for(self, target_ratio: float = 0.5) -> float:
        """Values per evaluation point at which :attr:`ratio` = ``target_ratio`` (noise_var scales as 1 / n_s):
        n_s · noise_var / (target² · seed_var). Divide by the prompts for the samples per prompt."""
        return self.samples * self.noise_var / (target_ratio ** 2 * self.seed_var) if self.seed_var > 0 else math.inf


def eval_noise(values: Sequence[float], seeds: Sequence[Hashable],
               prompts: Optional[Sequence[Hashable]] = None) -> EvalNoise:
    """Split the variance of per-seed evaluation points x̄_s (the mean of a run's per-sample values) into the
    point's own sampling noise and the seed-to-seed spread (one-way random effects: x = μ + a_s + e,
    Var(x̄_s) = σ²_seed + Var(e) / n_s).

    ``prompts`` given: the cells c are (seed, prompt) and the noise is that of resampling each prompt's responses,
    the prompts held fixed (the per-prompt variances s²_c, ddof 1). None: a seed's values are one cell, as if the
    prompts were drawn afresh too. Every cell needs at least 2 values, and at least 2 seeds."""
    x = np.asarray(values, dtype=np.float64)  # (N,)
    if x.ndim != 1 or len(seeds) != x.size or (prompts is not None and len(prompts) != x.size):
        raise DataError(f"eval_noise: {x.size} values, {len(seeds)} seed labels"
                        f"{'' if prompts is None else f', {len(prompts)} prompt labels'}; expected one per value")
    if not np.all(np.isfinite(x)):
        raise DataError("eval_noise: a value is NaN or infinite; expected finite per-sample values")
    cells: dict[Hashable, dict[Hashable, list[float]]] = {}
    for i, s in enumerate(seeds):
        cells.setdefault(s, {}).setdefault(None if prompts is None else prompts[i], []).append(x[i])
    if len(cells) < 2:
        raise DataError(f"eval_noise: {len(cells)} seed; expected at least 2")
    means, noise, sizes = [], [], []
    for s, by_prompt in cells.items():
        n_s = sum(len(v) for v in by_prompt.values())
        short = [p for p, v in by_prompt.items() if len(v) < 2]
        if short:
            raise DataError(f"eval_noise: seed {s!r}, prompt {short[0]!r}: 1 value; expected at least 2 per cell")
        means.append(sum(sum(v) for v in by_prompt.values()) / n_s)
        noise.append(sum(len(v) * np.var(v, ddof=1) for v in by_prompt.values()) / n_s ** 2)
        sizes.append(n_s)
    noise_var = float(np.mean(noise))
    seed_var = max(float(np.var(means, ddof=1)) - noise_var, 0.0)
    return EvalNoise(noise_var, seed_var, float(np.mean(sizes)), len(cells))
