"""Run a :class:`r2m_bench.design.BenchDesign` phase by phase (resumable).

Order: phase A (the pilot) -> the budgets (``budgets.json``); phase B (the oracle grid) -> the carried R2M setting
(``tuning.json``); phase C (the test runs, KL-stopped, and SER). Each phase starts once every run of the previous
one has finished. A run is skipped when its ``<run.root>/<name>/bench14.json`` exists, so an interrupted bench
resumes where it stopped; that file holds what the report reads (the evaluation points, the stop, the scalars and
the commit that made the run), and every finished run goes into ``trajectories.json``.

With ``workers > 1`` a phase's unfinished runs go to that many spawned processes, each with one torch thread
(``run.threads=1``, ``OMP_NUM_THREADS=1``). A run's numbers depend on its thread count, not on how many workers
ran beside it, so a bench can resume with another worker count.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

from r2m.config.parsing import load_config
from r2m.fileio import atomic_write_text, read_json_or_none
from r2m.recipes.rl.run import run_rl
from r2m.recipes.ser import run_ser
from r2m.runtime.runlog import read_metrics
from r2m_bench import phases
from r2m_bench.design import CARRIED_ARMS, FUSION_MOVE, Arm, BenchDesign, Phase, Plan, RunSpec, phase_runs
from r2m_bench.provenance import git_commit
from r2m_bench.ser_table import ser_summary
from r2m_bench.trajectories import EvalNoise, RunRecord, eval_noise, record_of, write_trajectories

log = logging.getLogger("r2m")

RESULT_FILE = "bench14.json"
_EVAL_KEYS = ("step", "eval/kl", "eval/gold", "eval/proxy")


def _config(spec: RunSpec, root: str, extra: Sequence[str]):
    return load_config(None, [*spec.overrides, *extra, f"run.root={root}", "run.log_with=[]", "run.progress=false"])


def _rl_saved(spec: RunSpec, root: str, extra: Sequence[str]) -> dict:
    res = run_rl(_config(spec, root, extra))
    rows = read_metrics(Path(root) / spec.name / "metrics.jsonl")
    scalars = {**dict(res.rm_accuracy), **(res.r2m_movement or {})}
    if res.stop_kl is not None:
        scalars["stop/eval_kl"] = res.stop_kl
    return {"evals": [{k: r[k] for k in _EVAL_KEYS if k in r} for r in rows if "eval/gold" in r],
            "scalars": scalars, "stop_reason": res.stop_reason}


def _ser_saved(spec: RunSpec, root: str, extra: Sequence[str]) -> dict:
    res = run_ser(_config(spec, root, extra))
    rows = res.table[1]
    summary = ser_summary(res)
    loops = sum(1 for lp in summary["loops"] if lp["loop"] > 0)
    scalars = {"ser/loop0_test_acc": rows[0][3], "ser/test_acc": rows[1][3], "ser/full_test_acc": rows[2][3],
               "ser/loops": loops}
    return {"scalars": scalars, "stop_reason": (res.stop or {}).get("reason"), **summary}


def _spec_steps(spec: RunSpec) -> Optional[int]:
    """The run's step cap (its last ``rl.steps=`` override), or None."""
    steps = [o.split("=", 1)[1] for o in spec.overrides if o.startswith("rl.steps=")]
    return int(steps[-1]) if steps else None


def _made_under(saved: dict, run_dir: Path) -> Optional[int]:
    """The step cap a saved run was made under: its result's ``steps_cap``, else its ``config.yaml``'s ``rl.steps``
    (results written before the cap was recorded); None when neither says."""
    if saved.get("steps_cap") is not None:
        return int(saved["steps_cap"])
    cfg = run_dir / "config.yaml"
    if not cfg.is_file():
        return None
    import yaml  # heavy: lazy (only for results written before steps_cap was recorded)

    return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("rl", {}).get("steps")


def stale_cap(spec: RunSpec, saved: dict, run_dir: Path) -> Optional[int]:
    """The cap a saved run was made under when it differs from ``spec``'s and that changes the run, else None. It
    does when the run stopped at its (smaller) cap, since it would have gone on, and for the arms that carry R2M's
    setting whatever stopped them: their ω(t) decays over ``rl.steps``. A vanilla-like run (constant learning
    rate) that stopped at its KL budget within the new cap is the same under it."""
    cap, made = _spec_steps(spec), _made_under(saved, run_dir)
    if cap is None or made is None or made == cap:
        return None
    last = max((int(e["step"]) for e in saved.get("evals") or []), default=0)
    if saved.get("stop_reason") == "step_cap" or spec.arm in CARRIED_ARMS or last > cap:
        return made
    return None


def _set_aside(run_dir: Path, cap: int) -> Path:
    """Move a stale run's folder to ``<name>.cap<cap>[.<n>]`` (kept, not deleted); its new path."""
    target, n = run_dir.with_name(f"{run_dir.name}.cap{cap}"), 1
    while target.exists():
        target, n = run_dir.with_name(f"{run_dir.name}.cap{cap}.{n}"), n + 1
    run_dir.rename(target)
    return target


def run_one(spec: RunSpec, root: str, extra: Sequence[str] = ()) -> dict:
    """One run of the design (skipped when its result file exists, unless :func:`stale_cap`: then its folder is set
    aside and the run is made again); its saved result."""
    done = Path(root) / spec.name / RESULT_FILE
    saved = read_json_or_none(done)
    made = stale_cap(spec, saved, done.parent) if saved is not None else None
    if made is not None:
        moved = _set_aside(done.parent, made)
        log.warning("[bench] %s was made under step cap %d, the design's is %s now: set aside as %s, run again",
                    spec.name, made, _spec_steps(spec), moved.name)
        saved = None
    if saved is None:
        t0 = time.perf_counter()
        saved = _ser_saved(spec, root, extra) if spec.arm is Arm.SER else _rl_saved(spec, root, extra)
        saved["wall_s"] = time.perf_counter() - t0
        saved["threads"] = torch.get_num_threads()
        saved["steps_cap"] = _spec_steps(spec)
        saved["commit"] = git_commit(Path(__file__).parent)  # the code that made this run (a bench may resume later)
        atomic_write_text(done, json.dumps(saved))
        log.info("[bench] %s done in %.0f s (%s)", spec.name, saved["wall_s"], saved.get("stop_reason"))
    return saved


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s w{os.getpid()} %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _run_quietly(spec: RunSpec, root: str, extra: Sequence[str]) -> str:
    run_one(spec, root, extra)
    return spec.name


def _finished(spec: RunSpec, root: str) -> bool:
    """The run's result file exists and is not :func:`stale_cap`."""
    saved = read_json_or_none(Path(root) / spec.name / RESULT_FILE)
    return saved is not None and stale_cap(spec, saved, Path(root) / spec.name) is None


def run_all(specs: Sequence[RunSpec], root: str, extra: Sequence[str] = (), workers: int = 1) -> list[RunRecord]:
    """``run_one`` of every spec; with ``workers > 1`` the unfinished ones run in that many one-thread processes
    first; every result is then read back from its file. Returns when all have finished (a phase's barrier)."""
    if workers < 1:
        raise ValueError(f"bench workers: expected >= 1, got {workers!r}")
    todo = [s for s in specs if not _finished(s, root)]
    if workers > 1 and len(todo) > 1:
        extra = (*extra, "run.threads=1")
        ctx = multiprocessing.get_context("spawn")  # no forked torch state: each worker imports its own
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx, initializer=_worker_init) as pool:
            for f in [pool.submit(_run_quietly, s, root, extra) for s in todo]:
                log.info("[bench] %s finished (worker)", f.result())
    return [record_of(s, run_one(s, root, extra)) for s in specs]


class Outcome(NamedTuple):
    plan: Plan
    records: list[RunRecord]
    """Every finished run of every phase, in phase order."""
    wall_s: float


def run_pilot(design: BenchDesign, root: str, out: Path, workers: int) -> tuple[list[RunRecord], dict]:
    """Phase A and ``<out>/budgets.json``."""
    recs = run_all(phase_runs(design, Phase.PILOT), root, (), workers)
    trajs: dict = {}
    for r in recs:
        trajs.setdefault(r.world, []).append(r.trajectory)
    noise: dict = {}
    for r in recs:
        found = eval_noise(Path(root) / r.name)
        if found is not None:
            noise.setdefault(r.world, []).append(found)
    se = {w: EvalNoise(statistics.median(n.se for n in ns), max(n.samples_per_prompt for n in ns))
          for w, ns in noise.items()}
    budgets = phases.budgets_from_pilot(design, trajs, se)
    atomic_write_text(out / "budgets.json", json.dumps(phases.budgets_json(design, budgets), indent=2) + "\n")
    return recs, budgets


def run_tuning(design: BenchDesign, root: str, out: Path, workers: int, pilot: Sequence[RunRecord],
               plan: Plan) -> tuple[list[RunRecord], Plan]:
    """Phase B and ``<out>/tuning.json``; the plan with the chosen setting."""
    recs = run_all(phase_runs(design, Phase.TUNING, plan), root, (), workers)
    budget = plan.primary(design, design.sweep.world)
    oracle = {r.name: (r.trajectory, r.scalars.get(FUSION_MOVE)) for r in recs}
    vanilla = {r.seed: r.trajectory for r in pilot if r.world == design.sweep.world}
    points = phases.grid_points(design, plan, oracle, vanilla, budget)
    chosen = phases.choose_setting(points)
    doc = phases.tuning_json(points, chosen, design.tuning_seeds)
    atomic_write_text(out / "tuning.json", json.dumps(doc, indent=2) + "\n")
    return recs, plan._replace(setting=chosen)


def run_design(design: BenchDesign, root: str, out: str | Path, *, command: str, workers: int = 1) -> Outcome:
    """Phases A, B, C in order; writes budgets.json, tuning.json and trajectories.json under ``out``."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pilot, budgets = run_pilot(design, root, out, workers)
    tuning, plan = run_tuning(design, root, out, workers, pilot, phases.plan_of(budgets))
    test = run_all(phase_runs(design, Phase.TEST, plan), root, (), workers)
    records = [*pilot, *tuning, *test]
    write_trajectories(out / "trajectories.json", design.name, command, plan, records)
    return Outcome(plan, records, time.perf_counter() - t0)
