"""Verdicts of a benchmark by claim: paired differences at matched KL.

Input: :class:`RunResult`\\ s, one per finished run (RL or SER), built from a run's metrics by
:func:`rl_result` / :func:`ser_result`. For each claim the design can decide (:func:`r2m_bench.design.
claims_in`), and each metric -- gold at every KL budget (:func:`r2m_bench.frontier.gold_at_kl`), final gold, peak
gold, or the claim's scalar (RM accuracy) -- the arms' values are paired by seed and compared by
:func:`r2m_bench.frontier.paired_bootstrap` (A - B, 95% percentile interval). A seed where a budget is not reached
by either arm is dropped from that pair (and the record's ``seeds`` says which remain). KL-targeted cells give
``final_gold@kl_target=<t>`` records. Output: :class:`r2m_bench.frontier.VerdictRecord`\\ s, ``verdicts.json``
(:func:`write_bench_verdicts`) and the verdict table that opens docs/BENCHMARKS.md (:func:`verdict_table`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

from r2m.eval.trajectory import Trajectory, eval_trajectory, gold_at_kl
from r2m.reports.tables import mean_sd
from r2m_bench.design import (
    CLAIMS,
    Arm,
    BenchDesign,
    ClaimSpec,
    KLRegime,
    RunSpec,
    claims_in,
)
from r2m_bench.frontier import VerdictRecord, final_gold, paired_bootstrap, peak_gold, write_verdicts


class RunResult(NamedTuple):
    """What the verdicts need of one finished run."""

    world: str
    algorithm: str
    """A key of ``r2m_bench.design.ALGORITHMS``, or ``SER``."""
    arm: Arm
    seed: int
    regime: KLRegime
    trajectory: Optional[Trajectory]
    """The run's evaluation points (step, eval/kl, eval/gold); None for SER runs."""
    scalars: Mapping[str, float]
    """Scalars of the run: ``rm_acc/*`` (R2M's Table 3), ``ser/*`` (SER Table 1)."""


def rl_result(spec: RunSpec, metrics: Sequence[Mapping[str, float]], scalars: Mapping[str, float]) -> RunResult:
    """An RL run's result from its ``metrics.jsonl`` rows (those with ``eval/gold``, in step order) and its
    summary scalars (e.g. ``RLResult.rm_accuracy``)."""
    return RunResult(spec.world, spec.algorithm, spec.arm, spec.seed, spec.regime, eval_trajectory(metrics),
                     dict(scalars))


def ser_result(spec: RunSpec, table_rows: Sequence[Sequence]) -> RunResult:
    """An SER run's result from its Table 1 rows (Loop 0, SER's kept loop, Full; column 3 = held-out accuracy)."""
    if len(table_rows) < 3:
        raise ValueError(f"SER result {spec.name}: expected Table 1 rows Loop 0, SER and Full, got {len(table_rows)}")
    acc = {"ser/loop0_test_acc": table_rows[0][3], "ser/test_acc": table_rows[1][3],
           "ser/full_test_acc": table_rows[2][3]}
    return RunResult(spec.world, spec.algorithm, Arm.SER, spec.seed, KLRegime.FIXED, None, acc)


class Metric(NamedTuple):
    """A named value of a run (None: not available, e.g. a KL budget the run never reached)."""

    name: str
    read: Callable[[RunResult], Optional[float]]


def _traj_metric(name: str, fn: Callable[[Trajectory], Optional[float]]) -> Metric:
    return Metric(name, lambda r: fn(r.trajectory) if r.trajectory is not None else None)


def gold_metrics(budgets: Sequence[float]) -> list[Metric]:
    """Gold at each KL budget, then final and peak gold."""
    out = [_traj_metric(f"gold@kl={b:g}", lambda t, b=b: gold_at_kl(t, float(b)).gold) for b in budgets]
    out.append(_traj_metric("final_gold", lambda t: final_gold(t).gold))
    out.append(_traj_metric("peak_gold", lambda t: peak_gold(t).gold))
    return out


def scalar_metric(key: str) -> Metric:
    return Metric(key, lambda r: r.scalars.get(key))


def _values(results: Sequence[RunResult], world: str, algorithm: str, arm: Arm, regime: KLRegime,
            metric: Metric) -> dict[int, Optional[float]]:
    """seed -> the metric, over the runs of one arm (a duplicate seed is refused, not silently overwritten)."""
    out: dict[int, Optional[float]] = {}
    for r in results:
        if (r.world, r.algorithm, r.arm, r.regime) == (world, algorithm, arm, regime):
            if r.seed in out:
                raise ValueError(f"bench results: two runs of {world}/{algorithm}/{arm.value}/{regime.value} "
                                 f"seed {r.seed}")
            out[r.seed] = metric.read(r)
    return out


class MetricPair(NamedTuple):
    """What a claim reads of arm A and of arm B (the same metric for gold claims)."""

    a: Metric
    b: Metric


def _metrics_of(spec: ClaimSpec, design: BenchDesign) -> list[MetricPair]:
    if spec.a.key is None:
        return [MetricPair(m, m) for m in gold_metrics(design.budgets)]
    return [MetricPair(scalar_metric(spec.a.key), scalar_metric(spec.b.key))]


def _record(results, world, algorithm, spec: ClaimSpec, regime: KLRegime, ma: Metric, mb: Metric,
            name: str, resamples: int) -> VerdictRecord:
    a = _values(results, world, algorithm, spec.a.arm, regime, ma)
    b = _values(results, world, algorithm, spec.b.arm, regime, mb)
    name = name if ma.name == mb.name else f"{ma.name} - {mb.name}"
    return VerdictRecord.from_bootstrap(world, algorithm, spec.claim, name, paired_bootstrap(a, b, resamples=resamples))


def verdict_records(results: Sequence[RunResult], design: BenchDesign, resamples: int = 10_000) -> list[VerdictRecord]:
    """Every (world, algorithm, claim, metric) the design decides, in claim-table order; then the claims of the
    KL-targeted cells on final gold (``final_gold@kl_target=<t>``)."""
    out = []
    for cell in claims_in(design):
        for ma, mb in _metrics_of(cell.spec, design):
            out.append(_record(results, cell.world, cell.algorithm, cell.spec, KLRegime.FIXED, ma, mb, ma.name,
                               resamples))
    final = gold_metrics(())[0]
    for c in design.cells:
        if c.regime is KLRegime.TARGETED:
            for spec in CLAIMS:
                if spec.a.key is None and {spec.a.arm, spec.b.arm} <= set(c.arms):
                    out.append(_record(results, c.world, c.algorithm, spec, KLRegime.TARGETED, final, final,
                                       f"final_gold@kl_target={design.kl_target:g}", resamples))
    return out


def headline_metric(spec: ClaimSpec, design: BenchDesign) -> str:
    """The metric of the verdict table: gold at the design's headline budget, or the claim's scalar."""
    if spec.a.key is None:
        return f"gold@kl={design.headline_budget:g}"
    return spec.a.key if spec.a.key == spec.b.key else f"{spec.a.key} - {spec.b.key}"


def _fmt(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def verdict_table(records: Sequence[VerdictRecord], design: BenchDesign) -> str:
    """The Markdown table that opens docs/BENCHMARKS.md: one row per claim and (world, algorithm), headline
    metric only, with the paired difference, its 95% interval, the seeds and the verdict."""
    specs = {s.claim: s for s in CLAIMS}
    lines = ["| claim | the paper | world | algorithm | metric | seeds | A − B | 95% CI | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = {s.claim: i for i, s in enumerate(CLAIMS)}
    for r in sorted(records, key=lambda r: order[r.claim]):
        spec = specs[r.claim]
        if r.metric != headline_metric(spec, design):
            continue
        seeds = ",".join(str(s) for s in r.seeds) or "-"
        lines.append(f"| `{r.claim.value}` | {spec.paper} | {r.world} | {r.algorithm} | {r.metric} | {seeds} | "
                     f"{_fmt(r.diff_mean)} | [{_fmt(r.ci95[0])}, {_fmt(r.ci95[1])}] | {r.verdict.value} |")
    return "\n".join(lines) + "\n"


def write_bench_verdicts(path: str | Path, results: Sequence[RunResult], design: BenchDesign, *, commit: str,
                         command: str, resamples: int = 10_000) -> list[VerdictRecord]:
    """:func:`verdict_records` written to ``path`` (docs/bench/verdicts.json) by ``write_verdicts``."""
    records = verdict_records(results, design, resamples)
    write_verdicts(path, records, commit=commit, command=command)
    return records


def frontier_curves(results: Sequence[RunResult], regime: KLRegime = KLRegime.FIXED
                    ) -> dict[str, dict[str, list[Trajectory]]]:
    """world -> ``"<algorithm> <arm>"`` -> the seeds' trajectories (seed order), for
    :func:`r2m_bench.plots.plot_frontiers`."""
    out: dict[str, dict[str, list[Trajectory]]] = {}
    for r in sorted((r for r in results if r.trajectory is not None and r.regime is regime), key=lambda r: r.seed):
        out.setdefault(r.world, {}).setdefault(f"{r.algorithm} {r.arm.value}", []).append(r.trajectory)
    return out


def _mean_sd(values: Sequence[float]) -> str:
    return mean_sd(values, empty="not reached")


def _row(world: str, label: str, trajs: Sequence[Trajectory], budgets: Sequence[float]) -> str:
    cells = []
    for b in budgets:
        golds = [g.gold for g in (gold_at_kl(t, float(b)) for t in trajs) if g.gold is not None]
        cells.append(f"{_mean_sd(golds)} ({len(golds)}/{len(trajs)})")
    peaks, finals = [peak_gold(t) for t in trajs], [final_gold(t) for t in trajs]
    peak = f"{_mean_sd([p.gold for p in peaks])} at KL {_mean_sd([p.kl for p in peaks])}, " \
           f"step {_mean_sd([float(p.step) for p in peaks])}"
    final = f"{_mean_sd([p.gold for p in finals])} at KL {_mean_sd([p.kl for p in finals])}"
    return f"| {world} | {label} | " + " | ".join(cells) + f" | {peak} | {final} |"


def matched_kl_table(results: Sequence[RunResult], budgets: Sequence[float],
                     regime: KLRegime = KLRegime.FIXED) -> str:
    """Markdown, one row per (world, algorithm arm): gold at each KL budget (mean ± sd over the seeds that reach
    it, and how many do), peak gold with its KL and step, final gold with its KL."""
    head = ["world", "method", *[f"gold @ KL {b:g}" for b in budgets], "peak gold (KL, step)", "final gold (KL)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for world, methods in frontier_curves(results, regime).items():
        lines += [_row(world, label, trajs, budgets) for label, trajs in methods.items()]
    return "\n".join(lines) + "\n"
