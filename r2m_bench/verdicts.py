"""Verdicts of a benchmark by claim: paired t-intervals over seeds, Holm across the primaries, margins.

Input: the test phase's :class:`r2m_bench.trajectories.RunRecord`\\ s, the design and its :class:`Plan`. For each
(world, algorithm, claim) the design can decide (:func:`r2m_bench.design.claims_in`): gold at the world's primary
budget (the claim's one primary metric; the other budgets are exploratory), final gold for the KL-targeted cells,
or the claim's scalar. The arms' values are paired by seed (:func:`r2m_bench.stats.paired_t`) and decided by
:func:`r2m_bench.stats.decide_claims` (Holm over exactly the primary records). ``inactive`` where the method did
nothing: an R2M-family arm whose fusion moved less than :data:`MIN_WEIGHT_CHANGE` (median
``r2m/fusion_weight_change`` over its runs; the head's movement does not count), SER with no self-labelling loop in
any run. ``not decidable`` beyond too few pairs: seeds dropped because one arm alone missed the KL budget (the
arm's reward decides how far it travels, so the pairs left are not a random sample), or an R2M-family arm whose
runs did not record the fusion's movement. Every record lists its dropped seeds. Output: ``verdicts.json`` and
``calibration.json``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Mapping, Optional, Sequence

from r2m.eval.trajectory import gold_at_kl
from r2m.fileio import atomic_write_text
from r2m_bench.design import (
    FUSION_MOVE,
    LADDER,
    MARGINS,
    MIN_WEIGHT_CHANGE,
    R2M_ARMS,
    Arm,
    BenchDesign,
    ClaimSpec,
    KLRegime,
    Phase,
    Plan,
    claims_in,
)
from r2m_bench.power import min_detectable_effect
from r2m_bench.stats import ClaimTest, VerdictRecord, decide_claims, json_float, paired_t, verdicts_document
from r2m_bench.trajectories import RunRecord


def gold_metric(budget: float) -> str:
    return f"gold@kl={budget:g}"


def _runs(records: Sequence[RunRecord], world: str, algorithm: str, arm: Arm, regime: KLRegime) -> list[RunRecord]:
    out = [r for r in records if (r.phase, r.world, r.algorithm, r.arm, r.regime)
           == (Phase.TEST, world, algorithm, arm, regime)]
    seeds = [r.seed for r in out]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"bench results: two runs of {world}/{algorithm}/{arm.value}/{regime.value} with one seed")
    return out


def _read(r: RunRecord, key: Optional[str], budget: Optional[float]) -> Optional[float]:
    if key is not None:
        v = r.scalars.get(key)
        return None if v is None else float(v)
    traj = r.trajectory
    if traj is None:
        return None
    return gold_at_kl(traj, budget).gold if budget is not None else float(traj.golds[-1])


def _learns_fusion(arm: Arm) -> bool:
    """An arm whose reward reads h through a fusion that trains (w/o Train freezes it by design)."""
    return arm in R2M_ARMS and arm is not Arm.WO_TRAIN


def inactive_reason(spec: ClaimSpec, runs_a: Sequence[RunRecord]) -> Optional[str]:
    """Why the claim's method (arm A) did nothing here, or None."""
    if _learns_fusion(spec.a.arm):
        moves = [r.scalars[FUSION_MOVE] for r in runs_a if FUSION_MOVE in r.scalars]
        if moves and statistics.median(moves) < MIN_WEIGHT_CHANGE:
            return (f"R2M's fusion did not move: relative weight change {statistics.median(moves):.2g} (median "
                    f"over {len(moves)} runs) < {MIN_WEIGHT_CHANGE:g}")
    if spec.a.arm is Arm.SER and runs_a and all(r.scalars.get("ser/loops", 0) == 0 for r in runs_a):
        return f"SER ran no self-labelling loop in any of its {len(runs_a)} runs"
    return None


def _unrecorded_fusion(spec: ClaimSpec, runs_a: Sequence[RunRecord]) -> Optional[str]:
    """Arm A learns a fusion but some of its runs hold no ``r2m/fusion_weight_change``: whether it moved is
    unknown, so the claim is not read as active."""
    if not _learns_fusion(spec.a.arm):
        return None
    missing = sorted(r.seed for r in runs_a if FUSION_MOVE not in r.scalars)
    if not missing:
        return None
    return (f"{spec.a.arm.value}: fusion movement not recorded ({FUSION_MOVE} missing in {len(missing)} of "
            f"{len(runs_a)} runs, seeds {', '.join(map(str, missing))})")


def _has(v: Optional[float]) -> bool:
    return v is not None and math.isfinite(v)


def _one_arm_misses(spec: ClaimSpec, a: Mapping[int, Optional[float]], b: Mapping[int, Optional[float]],
                    metric: str) -> Optional[str]:
    """Seeds whose run in one arm missed the budget (no value) while the other arm's reached it: a drop that
    depends on the arm, so the remaining pairs are biased. Seeds missing in both arms, or run in one only, drop
    without this bias (they are listed as dropped all the same)."""
    parts = []
    for arm, mine, other in ((spec.a.arm, a, b), (spec.b.arm, b, a)):
        seeds = sorted(s for s in mine if s in other and not _has(mine[s]) and _has(other[s]))
        if seeds:
            parts.append(f"{arm.value} missed {metric} at seeds {', '.join(map(str, seeds))}")
    if not parts:
        return None
    return "; ".join(parts) + " where the other arm reached it (a non-random drop biases the pairs)"


def _test(records, world, algorithm, spec: ClaimSpec, metric: str, primary: bool, budget: Optional[float]) -> ClaimTest:
    runs_a = _runs(records, world, algorithm, spec.a.arm, spec.regime)
    runs_b = _runs(records, world, algorithm, spec.b.arm, spec.regime)
    a = {r.seed: _read(r, spec.a.key, budget) for r in runs_a}
    b = {r.seed: _read(r, spec.b.key, budget) for r in runs_b}
    margin = MARGINS["gold"] if spec.a.key is None else MARGINS["rm_accuracy"]
    why = [x for x in (_unrecorded_fusion(spec, runs_a),
                       _one_arm_misses(spec, a, b, metric) if budget is not None else None) if x is not None]
    return ClaimTest(world, algorithm, spec.claim, metric, primary, paired_t(a, b), margin,
                     inactive_reason(spec, runs_a), "; ".join(why) or None)


def claim_tests(records: Sequence[RunRecord], design: BenchDesign, plan: Plan) -> list[ClaimTest]:
    """Every test of the design: per claim cell its primary metric first (gold at the primary budget, final
    gold for the KL-targeted regime, or the scalar), then the other budgets (exploratory)."""
    out = []
    for cell in claims_in(design):
        spec, w = cell.spec, cell.world
        if spec.a.key is not None:
            metric = spec.a.key if spec.a.key == spec.b.key else f"{spec.a.key} - {spec.b.key}"
            out.append(_test(records, w, cell.algorithm, spec, metric, spec.primary, None))
        elif spec.regime is KLRegime.TARGETED:
            out.append(_test(records, w, cell.algorithm, spec, f"final_gold@kl_target={plan.primary(design, w):g}",
                             spec.primary, None))
        else:
            primary = plan.primary(design, w)
            out.append(_test(records, w, cell.algorithm, spec, gold_metric(primary), spec.primary, primary))
            out += [_test(records, w, cell.algorithm, spec, gold_metric(b), False, b)
                    for b in plan.budgets[w] if b != primary]
    return out


def verdict_records(records: Sequence[RunRecord], design: BenchDesign, plan: Plan) -> list[VerdictRecord]:
    return decide_claims(claim_tests(records, design, plan))


def write_bench_verdicts(path: str | Path, verdicts: Sequence[VerdictRecord], *, commit: str, command: str) -> Path:
    doc = verdicts_document(verdicts, commit=commit, command=command, margin=MARGINS)
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return Path(path)


# ---------------------------------------------------------------------------------------------------- calibration


def calibration(records: Sequence[RunRecord], verdicts: Sequence[VerdictRecord], design: BenchDesign,
                plan: Plan) -> dict:
    """``calibration.json``: per world, each ladder rung's paired difference from vanilla at the primary budget
    (mean, 95% interval, verdict) and the smallest effect the paired t-test detects (80% power, alpha 0.05) at
    the seed count used, from the SD of the rungs' paired differences (pooled)."""
    worlds: dict[str, dict] = {}
    for w in sorted({v.world for v in verdicts}, key=str):
        metric = gold_metric(plan.primary(design, w)) if w in plan.budgets else None
        rungs = {v.claim: v for v in verdicts if v.world == w and v.metric == metric and v.algorithm == "RLOO"}
        out: dict[str, object] = {}
        sds, ns = [], []
        for arm, lam in LADDER.items():
            v = rungs.get(f"{arm.value}_vs_vanilla")
            if v is None:
                continue
            out[f"{lam:g}"] = {"diff_mean": json_float(v.diff_mean), "ci95": [json_float(c) for c in v.ci95],
                               "verdict": v.verdict.value}
            a = {r.seed: _read(r, None, plan.primary(design, w)) for r in _runs(records, w, "RLOO", arm,
                                                                                  KLRegime.FIXED)}
            b = {r.seed: _read(r, None, plan.primary(design, w)) for r in _runs(records, w, "RLOO", Arm.VANILLA,
                                                                                  KLRegime.FIXED)}
            d = [a[s] - b[s] for s in a if s in b and a[s] is not None and b[s] is not None]
            if len(d) >= 2:
                sds.append(statistics.stdev(d))
                ns.append(len(d))
        if not out:
            continue
        sd = math.sqrt(sum(s * s for s in sds) / len(sds)) if sds else None
        n = min(ns) if ns else 0
        out["min_detectable_effect"] = (json_float(min_detectable_effect(sd, n)) if sd and n >= 2 else None)
        worlds[w] = out
    return {"worlds": worlds}


def write_calibration(path: str | Path, doc: Mapping) -> Path:
    atomic_write_text(path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return Path(path)


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def verdict_table(verdicts: Sequence[VerdictRecord], primary: Optional[bool]) -> str:
    """Markdown, one row per record (``primary``: only primaries (True), only each exploratory claim's first
    metric (False), or every record (None))."""
    lines = ["| claim | world | algorithm | metric | pairs | dropped | A − B | 95% CI | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for v in verdicts:
        key = (v.world, v.algorithm, v.claim)
        if (primary is True and not v.primary) or (primary is False and (v.primary or key in seen)):
            seen.add(key)
            continue
        seen.add(key)
        p = "-" if v.p_holm is None else f"{v.p_holm:.3g}"
        verdict = v.verdict.value + (f" ({v.reason})" if v.reason else "")
        dropped = ", ".join(map(str, v.dropped)) or "-"
        lines.append(f"| `{v.claim}` | {v.world} | {v.algorithm} | {v.metric} | {len(v.seeds)} | {dropped} | "
                     f"{_fmt(v.diff_mean)} | [{_fmt(v.ci95[0])}, {_fmt(v.ci95[1])}] | {p} | {verdict} |")
    return "\n".join(lines) + "\n"
