"""Run a :class:`r2m.recipes.bench_design.BenchDesign` end to end (a reference runner for the split bench).

Order: the R2M sweep on the tuning seeds, :func:`best_setting`, every RL run of the cells with that setting, the
SER runs, then the verdicts (``verdicts.json``, the verdict table) and the frontier plots. Each run is skipped
when its ``<run.root>/<name>/bench14.json`` exists, so an interrupted bench resumes where it stopped; that file
holds what the verdicts read (the evaluation points and the scalars), so a finished bench can be re-reported
without rerunning anything.

With ``workers > 1`` the runs of each phase (the sweep; then the cells and SER) go to that many spawned processes,
each with one torch thread (``run.threads=1``, ``OMP_NUM_THREADS=1``): on 2 cores two one-thread runs of this
world's tiny models finish sooner than one two-thread run after another. A run's numbers depend on its thread
count, not on how many workers ran beside it; the world cache is built once and shared (its builds wait on one
another's lock). The result files are the same either way, so a bench can resume with another worker count.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

from r2m.config.parsing import load_config
from r2m.core.frontier import gold_at_kl
from r2m.recipes.bench_design import (
    Arm,
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
from r2m.runtime.provenance import git_commit
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
        if spec.arm is Arm.SER:
            res = run_ser(_config(spec, root, extra))
            # Table 1's rows for the verdicts, and the loops and stop for SER Table 1 per world (bench_report).
            saved = {"table_rows": [list(r) for r in res.table[1]], **ser_summary(res)}
        else:
            res = run_rl(_config(spec, root, extra))
            rows = read_metrics(Path(root) / spec.name / "metrics.jsonl")
            saved = {"evals": [{k: r[k] for k in _EVAL_KEYS} for r in rows if "eval/gold" in r],
                     "scalars": dict(res.rm_accuracy)}
        saved["wall_s"] = time.perf_counter() - t0
        saved["threads"] = torch.get_num_threads()
        saved["commit"] = git_commit(Path(__file__).parent)  # the code that made this run (a bench may resume later)
        atomic_write_text(done, json.dumps(saved))
        log.info("[bench14] %s done in %.0f s", spec.name, saved["wall_s"])
    if spec.arm is Arm.SER:
        return ser_result(spec, saved["table_rows"])
    return rl_result(spec, saved["evals"], saved["scalars"])


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s w{os.getpid()} %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _run_quietly(spec: RunSpec, root: str, extra: Sequence[str]) -> str:
    run_one(spec, root, extra)
    return spec.name


def run_all(specs: Sequence[RunSpec], root: str, extra: Sequence[str] = (), workers: int = 1) -> list[RunResult]:
    """``run_one`` of every spec, in order; with ``workers > 1`` the unfinished ones first run in that many
    one-thread processes (see the module doc), and every result is then read back from its file."""
    if workers < 1:
        raise ValueError(f"bench workers: expected >= 1, got {workers!r}")
    todo = [s for s in specs if not (Path(root) / s.name / RESULT_FILE).is_file()]
    if workers > 1 and len(todo) > 1:
        one_thread = (*extra, "run.threads=1")
        ctx = multiprocessing.get_context("spawn")  # no forked torch state: each worker imports its own
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_worker_init) as pool:
            futures = [pool.submit(_run_quietly, s, root, one_thread) for s in todo]
            for f in futures:
                log.info("[bench14] %s finished (worker)", f.result())
        extra = one_thread
    return [run_one(s, root, extra) for s in specs]


class DesignOutcome(NamedTuple):
    results: list[RunResult]
    setting: Optional[SweepPoint]
    """The sweep's best R2M setting, carried to the test seeds (None: no sweep, or no eligible point)."""
    verdicts: Path
    table: str
    plots: list[Path]
    wall_s: float


def run_sweep(design: BenchDesign, root: str, extra: Sequence[str] = (), workers: int = 1) -> Optional[SweepPoint]:
    """The sweep's runs, then the setting with the best mean gold at the headline budget."""
    specs = sweep_runs(design)
    results = run_all(specs, root, extra, workers)
    gold = {spec.name: gold_at_kl(res.trajectory, design.headline_budget).gold for spec, res in zip(specs, results)}
    return best_setting(gold, design)


def run_design(design: BenchDesign, root: str, out_dir: str | Path, *, commit: str, command: str,
               extra: Sequence[str] = (), workers: int = 1) -> DesignOutcome:
    """Everything of ``design``; writes ``<out_dir>/verdicts.json``, ``<out_dir>/verdicts_<name>.md`` (the verdict
    table), ``<out_dir>/matched_kl_<name>.md`` (gold at each budget, peak, final) and the frontier plots
    ``<out_dir>/frontier_<name>[_kl]_<world>.png``."""
    t0 = time.perf_counter()
    setting = run_sweep(design, root, extra, workers)
    results = run_all([*design_runs(design, setting), *ser_runs(design)], root, extra, workers)
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
