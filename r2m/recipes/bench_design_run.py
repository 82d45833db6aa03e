"""Run a :class:`r2m.recipes.bench_design.BenchDesign` end to end (a reference runner for the split bench).

Order: the R2M sweep on the tuning seeds, :func:`best_setting`, every RL run of the cells with that setting, the
SER runs, then the verdicts (``verdicts.json``, the verdict table) and the frontier plots. Each run is skipped
when its ``<run.root>/<name>/bench14.json`` exists, so an interrupted bench resumes where it stopped; that file
holds what the verdicts read (the evaluation points and the scalars), so a finished bench can be re-reported
without rerunning anything.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from r2m.config import load_config
from r2m.core.frontier import gold_at_kl
from r2m.recipes.bench_design import (
    BenchDesign,
    KLRegime,
    RunSpec,
    SweepPoint,
    best_setting,
    design_runs,
    ser_runs,
    sweep_runs,
)
from r2m.recipes.bench_verdicts import (
    RunResult,
    frontier_curves,
    matched_kl_table,
    rl_result,
    ser_result,
    verdict_table,
    write_bench_verdicts,
)
from r2m.reports.frontier_plot import plot_frontiers
from r2m.reports.ser_bench import ser_summary
from r2m.runtime.runlog import read_metrics
from r2m.recipes.rl.run import run_rl
from r2m.recipes.ser import run_ser
from r2m.fileio import atomic_write_text, read_json_or_none

log = logging.getLogger("r2m")

RESULT_FILE = "bench14.json"
_EVAL_KEYS = ("step", "eval/kl", "eval/gold")


def _config(spec: RunSpec, root: str, extra: Sequence[str]):
    return load_config(None, [*spec.overrides, *extra, f"run.root={root}", "run.log_with=[]", "run.progress=false"])


def run_one(spec: RunSpec, root: str, extra: Sequence[str] = ()) -> RunResult:
    """One RL or SER run of the design (skipped when its result file exists) as a :class:`RunResult`."""
    done = Path(root) / spec.name / RESULT_FILE
    saved = read_json_or_none(done)
    if saved is None:
        t0 = time.perf_counter()
        if spec.algorithm == "SER":
            res = run_ser(_config(spec, root, extra))
            # Table 1's rows for the verdicts, and the loops and stop for SER Table 1 per world (bench_report).
            saved = {"table_rows": [list(r) for r in res.table[1]], **ser_summary(res)}
        else:
            res = run_rl(_config(spec, root, extra))
            rows = read_metrics(Path(root) / spec.name / "metrics.jsonl")
            saved = {"evals": [{k: r[k] for k in _EVAL_KEYS} for r in rows if "eval/gold" in r],
                     "scalars": dict(res.rm_accuracy)}
        saved["wall_s"] = time.perf_counter() - t0
        atomic_write_text(done, json.dumps(saved))
        log.info("[bench14] %s done in %.0f s", spec.name, saved["wall_s"])
    if spec.algorithm == "SER":
        return ser_result(spec, saved["table_rows"])
    return rl_result(spec, saved["evals"], saved["scalars"])


class DesignOutcome(NamedTuple):
    results: list[RunResult]
    setting: Optional[SweepPoint]
    """The sweep's best R2M setting, carried to the test seeds (None: no sweep, or no eligible point)."""
    verdicts: Path
    table: str
    plots: list[Path]
    wall_s: float


def run_sweep(design: BenchDesign, root: str, extra: Sequence[str] = ()) -> Optional[SweepPoint]:
    """The sweep's runs, then the setting with the best mean gold at the headline budget."""
    gold = {}
    for spec in sweep_runs(design):
        traj = run_one(spec, root, extra).trajectory
        gold[spec.name] = gold_at_kl(traj, design.headline_budget).gold
    return best_setting(gold, design)


def run_design(design: BenchDesign, root: str, out_dir: str | Path, *, commit: str, command: str,
               extra: Sequence[str] = ()) -> DesignOutcome:
    """Everything of ``design``; writes ``<out_dir>/verdicts.json``, ``<out_dir>/verdicts_<name>.md`` (the verdict
    table), ``<out_dir>/matched_kl_<name>.md`` (gold at each budget, peak, final) and the frontier plots
    ``<out_dir>/frontier_<name>[_kl]_<world>.png``."""
    t0 = time.perf_counter()
    setting = run_sweep(design, root, extra)
    results = [run_one(s, root, extra) for s in (*design_runs(design, setting), *ser_runs(design))]
    out = Path(out_dir)
    verdicts = out / "verdicts.json"
    records = write_bench_verdicts(verdicts, results, design, commit=commit, command=command)
    table = verdict_table(records, design)
    atomic_write_text(out / f"verdicts_{design.name}.md", table)
    atomic_write_text(out / f"matched_kl_{design.name}.md", matched_kl_table(results, design.budgets))
    plots = plot_frontiers(frontier_curves(results), out, prefix=f"frontier_{design.name}", budgets=design.budgets)
    targeted = frontier_curves(results, KLRegime.TARGETED)
    if targeted:
        plots += plot_frontiers(targeted, out, prefix=f"frontier_{design.name}_kl", budgets=design.budgets)
    return DesignOutcome(results, setting, verdicts, table, plots, time.perf_counter() - t0)
