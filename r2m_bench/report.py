"""``r2m bench [run] --preset smoke|paper``, ``r2m bench report --from trajectories.json`` and ``r2m bench cell``.

:func:`run_bench_design` prints the cost estimate, runs :func:`r2m_bench.runner.run_design` on ``<run.root>``
(resumable) and writes the outputs: docs/BENCHMARKS.md for ``paper`` (its artefacts under docs/bench/),
``<run.root>/bench-smoke/`` for ``smoke``. :func:`write_outputs` makes verdicts.json, calibration.json and the
report from a trajectories document alone, so :func:`report_from` regenerates them without running anything.
The report opens with the primary verdicts, then the calibration ladder, then the exploratory verdicts, the
budgets and tuning, gold at matched KL, the runs' provenance, and a "Reading" section that says when the run has
not finished.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

from r2m.config.root import Config
from r2m.eval.trajectory import gold_at_kl
from r2m.fileio import atomic_write_text, read_json_or_none
from r2m.reports.tables import format_table, mean_sd
from r2m_bench.design import FUSION_MOVE, Arm, BenchDesign, KLRegime, Phase, Plan, design_preset, phase_runs
from r2m_bench.phases import estimate_cost, format_cost
from r2m_bench.provenance import git_commit
from r2m_bench.trajectories import RunRecord, Trajectories, read_trajectories
from r2m_bench.verdicts import (
    calibration,
    verdict_records,
    verdict_table,
    write_bench_verdicts,
    write_calibration,
)


def default_out(preset: str, root: str) -> Path:
    """The report's path: docs/BENCHMARKS.md for paper, ``<run.root>/bench-smoke/BENCHMARKS.md`` otherwise."""
    return Path("docs/BENCHMARKS.md") if preset == "paper" else Path(root) / f"bench-{preset}" / "BENCHMARKS.md"


def artefact_dir(preset: str, out: Path) -> Path:
    """The JSON files: ``<report dir>/bench/`` for paper (docs/bench), else beside the report."""
    return out.parent / "bench" if preset == "paper" else out.parent


def _ladder_table(cal: dict) -> str:
    rows = []
    for w, rungs in cal["worlds"].items():
        cells = []
        for lam in ("0.1", "0.25", "0.5"):
            r = rungs.get(lam)
            cells.append("-" if r is None or r["diff_mean"] is None else
                         f"{r['diff_mean']:+.3f} [{_num(r['ci95'][0])}, {_num(r['ci95'][1])}] {r['verdict']}")
        rows.append([w, *cells, _num(rungs.get("min_detectable_effect"))])
    return format_table(["world", "λ = 0.1", "λ = 0.25", "λ = 0.5", "min. detectable effect"], rows, markdown=True)


def _num(x: Optional[float]) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def _median_scalar(rs: Sequence[RunRecord], key: str) -> str:
    values = [r.scalars[key] for r in rs if key in r.scalars]
    return f"{statistics.median(values):.2g}" if values else "-"


def _matched_kl(records: Sequence[RunRecord], plan: Plan) -> str:
    """Gold at each of the world's budgets (mean ± sd over the seeds reaching it), the stop and movement."""
    groups: dict = {}
    for r in records:
        if r.phase is Phase.TEST and r.trajectory is not None:
            groups.setdefault((r.world, r.algorithm, r.arm.value, r.regime.value), []).append(r)
    rows = []
    for (w, algo, arm, regime), rs in groups.items():
        cells = []
        for b in plan.budgets.get(w, ()):
            g = [x.gold for x in (gold_at_kl(r.trajectory, b) for r in rs) if x.gold is not None]
            cells.append(f"@{b:g}: {mean_sd(g, empty='not reached')} ({len(g)}/{len(rs)})")
        reached = sum(r.stop_reason == "kl_reached" for r in rs)
        move = " / ".join(_median_scalar(rs, k) for k in ("r2m/weight_change", FUSION_MOVE))
        rows.append([w, algo, arm + (" (KL-targeted)" if regime == KLRegime.TARGETED.value else ""), "; ".join(cells),
                     f"{reached}/{len(rs)}", move])
    return format_table(["world", "algorithm", "arm", "gold at the budgets", "KL stop reached",
                         "weight change (RM / fusion)"],
                        rows, markdown=True)


def _noise(world: dict) -> str:
    """budgets.json's evaluation noise of one world, as a clause (empty when the pilot recorded none)."""
    se, sd, needed = (world.get(k) for k in ("eval_point_se", "gold_seed_sd", "eval_samples_per_prompt_needed"))
    if se is None or sd is None or needed is None:
        return ""
    return (f"; an evaluation point's gold SE {se:.4f} (median over the pilot's evaluations) against a "
            f"seed-to-seed SD of {sd:.4f} at the primary budget, at {world.get('eval_samples_per_prompt')} samples "
            f"per prompt (under half the SD from about {needed})")


def _provenance(records: Sequence[RunRecord]) -> str:
    commits: dict[str, int] = {}
    for r in records:
        commits[r.commit] = commits.get(r.commit, 0) + 1
    wall = sum(r.wall_s for r in records if r.wall_s is not None and math.isfinite(r.wall_s))
    return (f"- runs made at: {', '.join(f'`{c}` ({n} runs)' for c, n in sorted(commits.items()))}\n"
            f"- the runs' own wall times add up to {wall / 3600:.2f} h over {len(records)} runs (divide by the "
            "workers for the elapsed time)")


def _reading(design: BenchDesign, traj: Trajectories, art: Path) -> str:
    """The reader's words (``<artefacts>/reading_<preset>.md``) once every run of the design has finished; before
    that, a plain statement that the run has not finished."""
    expected = len(phase_runs(design, Phase.TEST, traj.plan)) if traj.plan is not None else None
    done = sum(r.phase is Phase.TEST for r in traj.runs)
    if expected is None or done < expected:
        return (f"The {design.name} run has not finished ({done} of {expected or 'the'} test runs recorded): no "
                "reading is written and no number above is final.")
    path = art / f"reading_{design.name}.md"
    return path.read_text().strip() if path.is_file() else f"(Not written yet: put it in {path}.)"


def write_outputs(traj: Trajectories, report: Path, art: Path, *, commit: str, command: str) -> str:
    """verdicts.json, calibration.json (in ``art``) and the report at ``report``, from ``traj`` alone."""
    design = design_preset(traj.design)
    if traj.plan is None:
        raise ValueError(f"bench report: the trajectories of {design.name} hold no plan (the pilot has not run)")
    test = [r for r in traj.runs if r.phase is Phase.TEST]
    verdicts = verdict_records(test, design, traj.plan)
    write_bench_verdicts(art / "verdicts.json", verdicts, commit=commit, command=command)
    cal = calibration(test, verdicts, design, traj.plan)
    write_calibration(art / "calibration.json", cal)
    tuning = read_json_or_none(art / "tuning.json")
    noise = (read_json_or_none(art / "budgets.json") or {}).get("worlds", {})
    budgets = "\n".join(f"- `{w}`: {', '.join(f'{b:g}' for b in bs)} (primary {traj.plan.primary(design, w):g}; "
                        f"step cap {traj.plan.caps[w]}){_noise(noise.get(w, {}))}"
                        for w, bs in traj.plan.budgets.items())
    s = traj.plan.setting
    setting = "none (no grid point complete: the config's defaults)" if s is None else \
        f"lr {s.lr:g}, init {s.init}, Omega {s.omega_floor:g}"
    text = (f"# Benchmarks: matched KL, a calibration ladder, paired seeds\n\n"
            f"Preset `{design.name}`; runs by `{traj.command}`; this report by `{command}` at commit `{commit}`. "
            f"Paired t-intervals over seeds (95%), Holm across the primary claims, margins gold ±0.01 and RM "
            f"accuracy ±0.01, fewer than 5 pairs: not decidable.\n\n"
            f"## Primary verdicts\n\n{verdict_table(verdicts, True)}\n"
            f"## Calibration ladder: (1 − λ)·RM + λ·gold against vanilla at the primary budget\n\n"
            f"{_ladder_table(cal)}\n\n"
            f"## Exploratory verdicts (each claim's first metric; every metric in verdicts.json)\n\n"
            f"{verdict_table(verdicts, False)}\n"
            f"## Budgets (phase A) and the carried R2M setting (phase B)\n\n{budgets}\n\nCarried setting: {setting}"
            f" (the oracle's gain over vanilla at matched KL; the grid, the KL each gain is read at and whether "
            f"each setting's fusion moved in tuning.json{'' if tuning else ', not written yet'}).\n\n"
            f"## Gold at matched KL\n\n{_matched_kl(test, traj.plan)}\n\n"
            f"## Provenance\n\n- commit (this report): `{commit}`\n{_provenance(traj.runs)}\n\n"
            f"## Reading\n\n{_reading(design, traj, art)}\n")
    atomic_write_text(report, text)
    return text


def report_from(path: str | Path, out: Optional[str], command: str) -> int:
    """``r2m bench report --from docs/bench/trajectories.json``: the outputs again, nothing run."""
    traj = read_trajectories(path)
    report = Path(out) if out else (Path("docs/BENCHMARKS.md") if traj.design == "paper" else
                                    Path(path).parent / "BENCHMARKS.md")
    art = Path(path).parent
    print(write_outputs(traj, report, art, commit=git_commit(), command=command))
    return 0


def run_bench_design(cfg: Config, preset: str, out: str | None = None, command: str | None = None,
                     workers: int = 1) -> int:
    """The cost estimate, the design of ``preset`` on ``cfg.run.root`` phase by phase, then the outputs."""
    from r2m_bench.runner import run_design  # heavy: lazy

    design = design_preset(preset)
    if cfg.run.threads and workers == 1:
        design = replace(design, extra=(f"run.threads={cfg.run.threads}",))
    print(format_cost(estimate_cost(design, workers=workers), workers), flush=True)
    root = str(cfg.run.root)
    report = Path(out) if out else default_out(preset, root)
    art = artefact_dir(preset, report)
    command = command or "r2m " + shlex.join(sys.argv[1:])
    outcome = run_design(design, root, art, command=command, workers=workers)
    print(format_cost(estimate_cost(design, outcome.plan, workers=workers), workers))
    traj = read_trajectories(art / "trajectories.json")
    print(write_outputs(traj, report, art, commit=git_commit(), command=command))
    return 0


def run_cell(cfg: Config, preset: str, world: str, arm: str, seed: int, root: Optional[str],
             plan_from: Optional[str]) -> int:
    """``r2m bench cell``: one run of the design with its overrides and name, under ``root`` (default
    ``<run.root>/cells``), the plan (budgets, caps, setting) read from the trajectories document."""
    from r2m_bench.runner import run_one  # heavy: lazy

    if plan_from is None:
        plan_from = str(artefact_dir(preset, default_out(preset, str(cfg.run.root))) / "trajectories.json")
    spec = cell_spec(preset, world, arm, seed, plan_from)
    where = root or str(Path(cfg.run.root) / "cells")
    saved = run_one(spec, where)
    print(json.dumps({"name": spec.name, "root": where, "stop_reason": saved.get("stop_reason"),
                      "scalars": saved.get("scalars")}, indent=1))
    return 0


def cell_spec(preset: str, world: str, arm: str, seed: int, plan_from: Optional[str]):
    """The design's run of (world, arm, seed) in the test phase (KL-targeted when ``arm`` ends in ``-kl``)."""
    design = design_preset(preset)
    plan = None
    if plan_from is not None and Path(plan_from).is_file():
        plan = read_trajectories(plan_from).plan
    target = Arm(arm.removesuffix("-kl")) if arm.removesuffix("-kl") in {a.value for a in Arm} else None
    regime = KLRegime.TARGETED if arm.endswith("-kl") else KLRegime.FIXED
    if plan is None:
        raise ValueError(f"bench cell: no plan in {plan_from!r}; expected the trajectories.json of a bench whose "
                         "pilot has run (--from)")
    found = [s for s in phase_runs(design, Phase.TEST, plan)
             if (s.world, s.arm, s.seed, s.regime) == (world, target, seed, regime)]
    if not found:
        raise ValueError(f"bench cell: no run of world {world!r}, arm {arm!r}, seed {seed} in preset {preset!r}")
    return found[0]
