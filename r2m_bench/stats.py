"""The benchmark's statistics: paired comparisons of two arms over shared seeds (d_s = a_s - b_s), read as verdicts
with honest error rates. Pure functions over numpy and scipy.stats; no I/O except :func:`write_verdicts`.

* :func:`paired_t` -- mean difference, standard error, the t-interval (df = n - 1) and a two-sided p-value; fewer
  than ``min_pairs`` (5) complete pairs: no interval (not decidable);
* :func:`holm` and :func:`decide_claims` -- one :class:`VerdictRecord` per :class:`ClaimTest`: Holm's step-down
  across the primary claims, the unadjusted interval for the secondary (exploratory) ones, an equivalence margin per
  metric, and ``inactive`` where the caller says the method did nothing (the order of the rules: :class:`Verdict`);
* :func:`decision_rates` and :func:`false_decision_rate` -- the share of simulated comparisons that an interval
  declares better or worse, at a true difference of 0 (its error rate) or of a few standard errors (its power);
* :func:`write_verdicts` -- ``docs/bench/verdicts.json``.

How many seeds and evaluation samples a comparison needs: :mod:`r2m_bench.power`.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence, TypeVar

import numpy as np
from scipy import stats

from r2m.errors import DataError
from r2m.fileio import atomic_write_text

ALPHA = 0.05
LEVEL = 1 - ALPHA
"""The intervals' coverage (0.95)."""
MIN_PAIRS = 5
"""Fewest complete pairs for a verdict: below it a t-interval is too wide to read and a bootstrap undercovers."""
K = TypeVar("K")


class Verdict(str, enum.Enum):
    """The reading of a paired comparison A - B. :func:`decide` applies the rules in this order; the first that
    holds gives the verdict."""

    INACTIVE = "inactive"
    """The method did nothing here (the caller decides, with a reason); overrides the numbers, still reported."""
    NOT_DECIDABLE = "not decidable"
    """Fewer than ``min_pairs`` complete pairs (no interval), or pairs the caller says cannot be read (with a
    reason: e.g. seeds dropped because one arm missed a KL budget, a non-random drop): never a verdict."""
    EQUIVALENT = "equivalent"
    """The whole interval lies inside (-margin, +margin), even when it excludes 0: a difference bounded below the
    margin is practically none (+0.0004 in [+0.0001, +0.0007] at margin 0.01 is equivalent, not better)."""
    BETTER = "better"
    """Significant and mean > 0. Primary claim: Holm-adjusted p < alpha; secondary: p < alpha (the unadjusted
    interval lies above 0)."""
    WORSE = "worse"
    """Significant and mean < 0."""
    INCONCLUSIVE = "inconclusive"
    """Not significant, and the interval reaches past the margin: effects of a size that matters are not ruled
    out (not a negative result)."""


class PairedDifferences(NamedTuple):
    diffs: dict
    """key -> a_k - b_k for the keys (seeds, runs) with a finite value in both arms, in key order."""
    dropped: tuple
    """The other keys, sorted: in one arm only, or None/NaN (e.g. a KL budget not reached) in either."""


def _finite(v: Optional[float]) -> bool:
    return v is not None and math.isfinite(float(v))


def paired_differences(a: Mapping[K, Optional[float]], b: Mapping[K, Optional[float]]) -> PairedDifferences:
    """d_k = a_k - b_k for each key with a finite value in both arms, and the sorted dropped keys."""
    diffs, dropped = {}, []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if _finite(va) and _finite(vb):
            diffs[k] = float(va) - float(vb)
        else:
            dropped.append(k)
    return PairedDifferences(diffs, tuple(dropped))


class TStats(NamedTuple):
    """t statistics of the last axis of an (..., n) array of differences; each field has shape (...)."""

    mean: np.ndarray
    se: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    p: np.ndarray


def t_stats(d: np.ndarray, level: float = LEVEL) -> TStats:
    """The one-sample t-interval of the mean of d_1..d_n (last axis), vectorised over the leading axes.

    d̄ = (1/n) sum_i d_i, s² = sum_i (d_i - d̄)² / (n - 1), se = s / √n, df = n - 1,
    ci = d̄ ± t_{(1+level)/2, df} · se,  p = 2 · P(T_df > |d̄| / se)  (two-sided).
    All d equal (se = 0): ci = [d̄, d̄] and p = 1 when d̄ = 0, else 0.
    """
    d = np.asarray(d, dtype=np.float64)
    n = d.shape[-1]
    if n < 2:
        raise DataError(f"t_stats: {n} differences; a t-interval needs at least 2")
    mean = d.mean(axis=-1)  # (...)
    se = d.std(axis=-1, ddof=1) / math.sqrt(n)  # (...)
    half = stats.t.ppf((1 + level) / 2, n - 1) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.t.sf(np.abs(mean) / se, n - 1)
    p = np.where(se > 0, p, np.where(mean == 0, 1.0, 0.0))
    return TStats(mean, se, mean - half, mean + half, p)


def t_bounds(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of :func:`t_stats` at :data:`LEVEL`: the interval :func:`decision_rates` checks by default."""
    s = t_stats(d)
    return s.lo, s.hi


class PairedInterval(NamedTuple):
    """A paired comparison: the t-interval of the mean difference, or, below ``min_pairs``, none."""

    n: int
    """Complete pairs."""
    diff_mean: float
    """d̄ over the complete pairs (NaN with none; reported, without an interval, below ``min_pairs``)."""
    se: float
    """s / √n (NaN when not decidable)."""
    df: int
    ci: tuple[float, float]
    """d̄ ± t_{(1+level)/2, n-1} · se (NaN, NaN when not decidable)."""
    p_value: float
    """Two-sided, unadjusted (NaN when not decidable)."""
    level: float
    min_pairs: int
    seeds: tuple
    """The keys of the complete pairs, sorted."""
    dropped: tuple

    @property
    def decidable(self) -> bool:
        return self.n >= self.min_pairs


def t_interval(diffs: Sequence[float], *, level: float = LEVEL, min_pairs: int = MIN_PAIRS) -> PairedInterval:
    """:func:`t_stats` of the paired differences ``diffs`` as a :class:`PairedInterval` (no keys)."""
    if not 0 < level < 1:
        raise DataError(f"t_interval: level={level}; expected 0 < level < 1")
    if int(min_pairs) != min_pairs or min_pairs < 2:
        raise DataError(f"t_interval: min_pairs={min_pairs!r}; expected an integer >= 2 (a t-interval needs 2)")
    d = np.asarray(diffs, dtype=np.float64)  # (n,)
    if d.ndim != 1 or not np.all(np.isfinite(d)):
        raise DataError(f"t_interval: diffs={list(diffs)!r}; expected a flat sequence of finite numbers")
    n, nan = int(d.size), math.nan
    if n < min_pairs:
        return PairedInterval(n, float(d.mean()) if n else nan, nan, max(n - 1, 0), (nan, nan), nan, level,
                              int(min_pairs), (), ())
    s = t_stats(d, level)
    return PairedInterval(n, float(s.mean), float(s.se), n - 1, (float(s.lo), float(s.hi)), float(s.p), level,
                          int(min_pairs), (), ())


def paired_t(a: Mapping[K, Optional[float]], b: Mapping[K, Optional[float]], *, level: float = LEVEL,
             min_pairs: int = MIN_PAIRS) -> PairedInterval:
    """A - B over the seeds complete in both (:func:`paired_differences`), by :func:`t_interval`."""
    diffs, dropped = paired_differences(a, b)
    return t_interval(list(diffs.values()), level=level, min_pairs=min_pairs)._replace(seeds=tuple(diffs),
                                                                                        dropped=dropped)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order. With p_(1) <= ... <= p_(m) sorted (ties stably),

        p̃_(i) = max_{j <= i} min(1, (m - j + 1) · p_(j)):

    monotone in the sorted order and capped at 1. Rejecting H_i when p̃_i < alpha controls the family-wise error
    rate at alpha (Holm 1979)."""
    p = np.asarray(p_values, dtype=np.float64)  # (m,)
    if p.ndim != 1 or not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise DataError(f"holm: p_values={list(p_values)!r}; expected a flat sequence of numbers in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))  # (m,) sorted order
    out = np.empty(m)
    out[order] = adjusted
    return out


def verdict_of(diff_mean: float, ci: tuple[float, float], *, margin: float, significant: bool) -> Verdict:
    """EQUIVALENT when -margin < lo and hi < margin (margin 0: never); else BETTER or WORSE by the sign of
    ``diff_mean`` when ``significant``; else INCONCLUSIVE. (INACTIVE and NOT_DECIDABLE come first: :func:`decide`.)"""
    lo, hi = ci
    if -margin < lo and hi < margin:
        return Verdict.EQUIVALENT
    if significant and diff_mean != 0:
        return Verdict.BETTER if diff_mean > 0 else Verdict.WORSE
    return Verdict.INCONCLUSIVE


def _text(x) -> str:
    return x.value if isinstance(x, enum.Enum) else str(x)


@dataclass(frozen=True)
class ClaimTest:
    """One (world, algorithm, claim, metric) comparison to decide."""

    world: str
    algorithm: str
    claim: str
    """The claim's id (a ``str`` enum is written as its value)."""
    metric: str
    """What was compared, e.g. ``gold@kl=0.1``, ``rm_accuracy``."""
    primary: bool
    """The claim's one primary metric, fixed before the runs: in the Holm family. Otherwise exploratory."""
    interval: PairedInterval
    margin: float
    """The metric's equivalence margin, in its units (gold 0.01, RM accuracy 0.01); 0 turns equivalence off."""
    inactive: Optional[str] = None
    """Why the method did nothing here (e.g. "SER ran no loop"); set, the verdict is INACTIVE."""
    undecidable: Optional[str] = None
    """Why the pairs cannot be read however many there are (e.g. one arm missed a KL budget at seeds 3, 7: the
    pairs left are not a random sample); set, the verdict is NOT_DECIDABLE (after INACTIVE)."""

    @property
    def decidable(self) -> bool:
        """Enough pairs and nothing that makes them unreadable: the test has a p-value in the Holm family."""
        return self.interval.decidable and self.undecidable is None


VERDICT_KEYS = ("world", "algorithm", "claim", "metric", "primary", "seeds", "dropped", "diff_mean", "ci95",
                "p_holm", "verdict", "reason")
"""The keys of one object of ``verdicts.json``, in order."""


@dataclass(frozen=True)
class VerdictRecord:
    """One object of ``verdicts.json`` (its keys: :data:`VERDICT_KEYS`)."""

    world: str
    algorithm: str
    claim: str
    metric: str
    primary: bool
    seeds: tuple[int, ...]
    """The seeds of the complete pairs."""
    dropped: tuple[int, ...]
    """The seeds left out of the pairs: in one arm only, or with no value (e.g. a KL budget not reached) in
    either."""
    diff_mean: float
    ci95: tuple[float, float]
    """The unadjusted (1 - alpha) t-interval (95% at the default), also for primary claims."""
    p_holm: Optional[float]
    """Holm-adjusted p; None for secondary claims and below ``min_pairs``."""
    verdict: Verdict
    reason: Optional[str]
    """Why there is no verdict on the numbers: the inactive reason, the undecidable one, or the pairs short of
    ``min_pairs``."""

    def to_json(self) -> dict:
        """Exactly :data:`VERDICT_KEYS`; ``ci95`` as ``[lo, hi]``, NaN as null."""
        return {"world": self.world, "algorithm": self.algorithm, "claim": self.claim, "metric": self.metric,
                "primary": bool(self.primary), "seeds": [int(s) for s in self.seeds],
                "dropped": [int(s) for s in self.dropped],
                "diff_mean": json_float(self.diff_mean), "ci95": [json_float(c) for c in self.ci95],
                "p_holm": None if self.p_holm is None else json_float(self.p_holm), "verdict": self.verdict.value,
                "reason": self.reason}


def json_float(x: float) -> Optional[float]:
    """``x`` as a JSON number, or None (null) when it is NaN or infinite (JSON has no NaN)."""
    return float(x) if math.isfinite(x) else None


def decide(test: ClaimTest, p_holm: Optional[float], alpha: float = ALPHA) -> tuple[Verdict, Optional[str]]:
    """The verdict of one claim and its reason, by the rules of :class:`Verdict` in order. ``p_holm``: the claim's
    Holm-adjusted p when it is primary (its decision), None when secondary (decided on its own p)."""
    iv = test.interval
    if test.inactive is not None:
        return Verdict.INACTIVE, test.inactive
    if test.undecidable is not None:
        return Verdict.NOT_DECIDABLE, test.undecidable
    if not iv.decidable:
        dropped = f"; dropped {', '.join(map(str, iv.dropped))}" if iv.dropped else ""
        return Verdict.NOT_DECIDABLE, f"{iv.n} complete pairs (at least {iv.min_pairs} needed){dropped}"
    p = p_holm if test.primary else iv.p_value
    if p is None:
        raise DataError(f"decide: {test.claim} ({test.metric}) is primary and decidable; expected its Holm p")
    return verdict_of(iv.diff_mean, iv.ci, margin=test.margin, significant=p < alpha), None


def _check_tests(tests: Sequence[ClaimTest], alpha: float) -> None:
    seen, primary = set(), set()
    for t in tests:
        key = (t.world, t.algorithm, _text(t.claim), t.metric)
        where = "/".join(key)
        if key in seen:
            raise DataError(f"decide_claims: {where} appears twice; expected one test per (world, algorithm, "
                            "claim, metric)")
        seen.add(key)
        if t.primary and key[:3] in primary:
            raise DataError(f"decide_claims: {where}: a second primary metric for this claim; expected one")
        primary.update([key[:3]] if t.primary else [])
        if not (math.isfinite(t.margin) and t.margin >= 0):
            raise DataError(f"decide_claims: {where}: margin={t.margin!r}; expected a finite number >= 0")
        if not math.isclose(t.interval.level, 1 - alpha):
            raise DataError(f"decide_claims: {where}: interval level {t.interval.level} with alpha {alpha}; "
                            "expected level = 1 - alpha (one alpha for the interval and the Holm decision)")
        if t.inactive is not None and not str(t.inactive).strip():
            raise DataError(f"decide_claims: {where}: an empty inactive reason; expected why the method did nothing")
        if t.undecidable is not None and not str(t.undecidable).strip():
            raise DataError(f"decide_claims: {where}: an empty undecidable reason; expected why the pairs cannot "
                            "be read")


def decide_claims(tests: Sequence[ClaimTest], alpha: float = ALPHA) -> list[VerdictRecord]:
    """One :class:`VerdictRecord` per test, in order.

    The Holm family is every primary test passed (one call, one family; inactive ones included, since activity
    is not an outcome of the comparison). A primary test that is not decidable (below ``min_pairs``, or
    ``undecidable``) has no p-value: it enters the family as p = 1, so the family's size m is the design's, not
    the count of cells that reached enough pairs; its ``p_holm`` is written as null. Secondary tests are decided
    on their unadjusted interval.
    """
    if not 0 < alpha < 1:
        raise DataError(f"decide_claims: alpha={alpha}; expected 0 < alpha < 1")
    _check_tests(tests, alpha)
    primary = [i for i, t in enumerate(tests) if t.primary]
    family = [tests[i].interval.p_value if tests[i].decidable else 1.0 for i in primary]
    adjusted = dict(zip(primary, holm(family).tolist())) if primary else {}
    out = []
    for i, t in enumerate(tests):
        p_holm = adjusted[i] if t.primary and t.decidable else None
        verdict, reason = decide(t, p_holm, alpha)
        iv = t.interval
        out.append(VerdictRecord(t.world, t.algorithm, _text(t.claim), t.metric, t.primary, tuple(iv.seeds),
                                 tuple(iv.dropped), iv.diff_mean, iv.ci, p_holm, verdict, reason))
    return out


def method_text(margin: Mapping[str, float], *, alpha: float = ALPHA, min_pairs: int = MIN_PAIRS) -> str:
    """The ``method`` line of verdicts.json, from the settings the verdicts were decided with."""
    level = f"{100 * (1 - alpha):g}%"
    margins = ", ".join(f"{k} ±{v:g}" for k, v in margin.items())
    return (f"paired t-interval over seeds ({level}, df = n - 1); fewer than {min_pairs} complete pairs: not "
            f"decidable, and so are pairs with seeds dropped because one arm alone missed the KL budget; Holm's "
            f"step-down across the primary claims (better/worse when the Holm-adjusted p < "
            f"{alpha:g}, direction by the sign of the mean; the unadjusted {level} interval reported); secondary "
            f"claims exploratory, decided on their unadjusted interval; equivalence margin {margins}: equivalent "
            f"when the whole interval lies inside it (before better/worse); inactive where the method did nothing")


def verdicts_document(records: Sequence[VerdictRecord], *, commit: str, command: str, margin: Mapping[str, float],
                      method: Optional[str] = None) -> dict:
    """``{"commit", "command", "method", "margin", "verdicts": [...]}``; ``method`` defaults to
    :func:`method_text` of ``margin``."""
    for k, v in margin.items():
        if not (math.isfinite(v) and v >= 0):
            raise DataError(f"verdicts: margin[{k!r}]={v!r}; expected a finite number >= 0")
    return {"commit": commit, "command": command, "method": method or method_text(margin),
            "margin": {k: float(v) for k, v in margin.items()}, "verdicts": [r.to_json() for r in records]}


def write_verdicts(path: str | Path, records: Sequence[VerdictRecord], *, commit: str, command: str,
                   margin: Mapping[str, float], method: Optional[str] = None) -> Path:
    """:func:`verdicts_document` as indented JSON (no NaN), written through a temporary name."""
    doc = verdicts_document(records, commit=commit, command=command, margin=margin, method=method)
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return Path(path)


# ------------------------------------------------------------------------------------ the interval's error rate


class Errors(str, enum.Enum):
    """The distribution of a simulated pair's error, scaled to unit variance."""

    NORMAL = "normal"
    T3 = "t3"
    """Student's t with 3 degrees of freedom (heavy tails; variance 3, divided out)."""


ERROR_DRAWS: dict[Errors, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    Errors.NORMAL: lambda rng, shape: rng.standard_normal(shape),
    Errors.T3: lambda rng, shape: rng.standard_t(3, shape) / math.sqrt(3.0),
}
IntervalFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(trials, n) differences -> (lo, hi), each (trials,): one interval per simulated comparison."""


def simulated_differences(n: int, trials: int, errors: Errors | str = Errors.NORMAL, seed: int = 0,
                          effect_se: float = 0.0) -> np.ndarray:
    """(trials, n) paired differences d = δ + e, e i.i.d. with unit variance, δ = effect_se / √n: a true
    difference of ``effect_se`` standard errors of the mean (se = σ / √n with σ = 1)."""
    if n < 2 or trials < 1:
        raise DataError(f"simulated_differences: n={n}, trials={trials}; expected n >= 2 and trials >= 1")
    rng = np.random.default_rng(seed)
    return effect_se / math.sqrt(n) + ERROR_DRAWS[Errors(errors)](rng, (trials, n))


class DecisionRates(NamedTuple):
    better: float
    """Share of trials whose interval lies above 0 (worse: below 0)."""
    worse: float
    trials: int

    @property
    def decided(self) -> float:
        return self.better + self.worse


def decision_rates(n: int, trials: int = 4000, errors: Errors | str = Errors.NORMAL, seed: int = 0, *,
                   effect_se: float = 0.0, interval: IntervalFn = t_bounds) -> DecisionRates:
    """How often ``interval`` declares a difference (lo > 0: better, hi < 0: worse) over ``trials`` simulated
    comparisons of n pairs (:func:`simulated_differences`). At effect_se = 0 every decision is false (the error
    rate: alpha for the t-interval with normal errors); at effect_se > 0, ``better`` is the power. No margin:
    this checks the test of a difference."""
    lo, hi = interval(simulated_differences(n, trials, errors, seed, effect_se))  # (trials,) each
    return DecisionRates(float(np.mean(lo > 0)), float(np.mean(hi < 0)), trials)


def false_decision_rate(n: int, trials: int = 4000, errors: Errors | str = Errors.NORMAL, seed: int = 0, *,
                        interval: IntervalFn = t_bounds) -> float:
    """The share of null comparisons (true difference 0) declared better or worse."""
    return decision_rates(n, trials, errors, seed, interval=interval).decided
