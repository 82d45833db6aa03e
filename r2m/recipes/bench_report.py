"""``r2m bench [run] --preset smoke|paper``: the issue-14 design end to end and its report.

:func:`run_bench_design` runs :func:`r2m.recipes.bench_design_run.run_design` on ``<run.root>`` (resumable: each
finished run is read from its ``bench14.json``), the cost arms of R2M Figure 7 on the ``length`` world, and writes
the report: docs/BENCHMARKS.md for ``paper`` (its artefacts under docs/bench/), ``<run.root>/bench-smoke/`` for
``smoke``. The report opens with the verdict table, then the matched-KL tables, the frontier plots, the alarm's
validation (r2m.recipes.bench_alarm; ``alarm.json`` beside verdicts.json), SER Table 1
per world, the cost section, each run's wall time, the provenance (commit, command, threads, wall time) and a
"Reading" section left for the numbers' reader.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from r2m.config.root import Config
from r2m.config.parsing import load_config
from r2m.core.frontier import gold_at_kl
from r2m.fileio import atomic_write_text, read_json_or_none
from r2m.recipes.bench import bench_cost, format_cost
from r2m.recipes.bench_alarm import write_alarm_validation
from r2m.recipes.bench_design import (Arm, BenchDesign, RunSpec, design_preset, design_runs, ser_runs, sweep_runs,
                                     world_overrides)
from r2m.recipes.bench_design_run import RESULT_FILE, DesignOutcome, run_design
from r2m.recipes.bench_verdicts import rl_result
from r2m.reports.ser_bench import ser_tables
from r2m.reports.tables import format_table
from r2m.runtime.provenance import git_commit

COST_STEPS = {"smoke": 3, "paper": 12}
"""``bench_cost`` steps per preset (one warm-up step is not timed)."""


def default_out(preset: str, root: str) -> Path:
    """The report's path: docs/BENCHMARKS.md for paper, ``<run.root>/bench-smoke/BENCHMARKS.md`` otherwise."""
    return Path("docs/BENCHMARKS.md") if preset == "paper" else Path(root) / f"bench-{preset}" / "BENCHMARKS.md"


def artefact_dir(preset: str, out: Path) -> Path:
    """verdicts.json, the tables and the plots: ``<report dir>/bench/`` for paper (docs/bench), else beside it."""
    return out.parent / "bench" if preset == "paper" else out.parent


def run_cost_bench(design: BenchDesign, root: str, steps: int) -> dict:
    """``bench_cost`` on the design's ``length`` world, skipped when ``bench14-<name>-cost/result.json`` exists."""
    name = f"bench14-{design.name}-cost"
    done = Path(root) / name / "result.json"
    if read_json_or_none(done) is None:
        cfg = load_config(None, [*world_overrides("length"), *design.base, f"run.root={root}", "run.log_with=[]",
                                 "run.progress=false", f"run.name={name}"])
        atomic_write_text(done, json.dumps(bench_cost(cfg, steps), indent=1))
    return read_json_or_none(done)


class RunTime(NamedTuple):
    name: str
    kind: str
    wall_s: float
    commit: str
    """The commit that made the run (``bench14.json``; "not recorded" before runs recorded it)."""


def run_times(design: BenchDesign, root: str, setting) -> list[RunTime]:
    """Each run's logged wall time (``bench14.json``: the first run of a (world, seed) includes its RM build, the
    first run of all the SFT stages)."""
    specs: Sequence[RunSpec] = [*sweep_runs(design), *design_runs(design, setting), *ser_runs(design)]
    out = []
    for s in specs:
        saved = read_json_or_none(Path(root) / s.name / RESULT_FILE) or {}
        out.append(RunTime(s.name, s.algorithm if s.arm is Arm.SER else s.arm.value, saved.get("wall_s", float("nan")),
                           saved.get("commit", "not recorded")))
    return out


def _times_table(times: Sequence[RunTime]) -> str:
    kinds = sorted({t.kind for t in times})
    rows = []
    for k in kinds:
        vals = [t.wall_s for t in times if t.kind == k]
        rows.append([k, len(vals), f"{statistics.median(vals):.1f}", f"{max(vals):.1f}", f"{sum(vals):.0f}"])
    return format_table(["arm", "runs", "median s", "max s", "total s"], rows, markdown=True)


def _ser_section(design: BenchDesign, root: str) -> str:
    """SER Table 1 per world and SER mode (issue 14 item 6), from the SER runs' result files."""
    parts, runs = [], ser_runs(design)
    for w in design.ser_worlds:
        for mode in design.ser_modes:
            specs = [s for s in runs if s.world == w and s.algorithm == mode.name]
            saved = [read_json_or_none(Path(root) / s.name / RESULT_FILE) for s in specs]
            how = ", ".join(f"`{o}`" for o in mode.overrides) or "the defaults"
            parts.append(f"### World `{w}`, {mode.name} ({how}; {len(saved)} seeds)\n\n" + ser_tables(saved))
    return "\n\n".join(parts)


def _sweep_table(design: BenchDesign, root: str, chosen) -> str:
    """Each sweep point's gold at the headline budget per tuning seed (the chosen point marked)."""
    if design.sweep is None:
        return "(no sweep)"
    by_point: dict = {}
    for spec in sweep_runs(design):
        saved = read_json_or_none(Path(root) / spec.name / RESULT_FILE)
        gold = gold_at_kl(rl_result(spec, saved["evals"], saved["scalars"]).trajectory, design.headline_budget).gold
        point = spec.name.rsplit("-s", 1)[0].split("-r2m-", 1)[1]
        by_point.setdefault(point, []).append("not reached" if gold is None else f"{gold:.3f}")
    rows = [[p, *golds] for p, golds in by_point.items()]
    tag = "none eligible" if chosen is None else f"lr {chosen.lr:g}, init {chosen.init}, Omega {chosen.omega_floor:g}"
    return (format_table(["setting", *[f"seed {s}" for s in design.sweep.seeds]], rows, markdown=True)
            + f"\n\nCarried to the test seeds: {tag}.")


def _run_minutes(times: Sequence[RunTime]) -> float:
    return sum(t.wall_s for t in times if math.isfinite(t.wall_s)) / 60


def _run_commits(times: Sequence[RunTime]) -> str:
    counts: dict[str, int] = {}
    for t in times:
        counts[t.commit] = counts.get(t.commit, 0) + 1
    return ", ".join(f"`{c}` ({n} runs)" for c, n in sorted(counts.items()))


def _reading(art: Path, preset: str) -> str:
    """The "Reading" section: ``<artefacts>/reading_<preset>.md`` when a reader has written it (so re-making the
    report keeps it), else a placeholder."""
    path = art / f"reading_{preset}.md"
    return path.read_text().strip() if path.is_file() else f"(Not written yet: put it in {path}.)"


def _threads_line(workers: int) -> str:
    if workers > 1:
        return f"{workers} worker processes side by side, one torch thread each (wall times are under that load)"
    return "one after another"


def _report(design: BenchDesign, outcome: DesignOutcome, root: str, out: Path, cost: dict, cost_steps: int,
            command: str, commit: str, wall_s: float, workers: int = 1, alarm: str = "") -> str:
    art = artefact_dir(design.name, out)
    rel = os.path.relpath(art, out.parent)
    times = run_times(design, root, outcome.setting)
    plots = "\n".join(f"![{p.stem}]({os.path.relpath(p, out.parent)})" for p in outcome.plots)
    return (f"# Benchmarks: matched KL, controls, worlds, paired seeds (issue 14)\n\n"
            f"Preset `{design.name}`, made by `{command}` at commit `{commit}`. Paired differences over seeds with "
            f"95% bootstrap intervals; gold at KL {design.headline_budget:g} is the headline metric (fixed before "
            f"any run). The same verdicts are in `{rel}/verdicts.json`.\n\n## Verdicts\n\n{outcome.table}\n\n"
            f"## Gold at matched KL, peak and final\n\n"
            f"{(art / f'matched_kl_{design.name}.md').read_text()}\n\n"
            f"## R2M hyper-parameter sweep (tuning seeds, `length` world)\n\n{_sweep_table(design, root, outcome.setting)}"
            f"\n\n## Frontier plots: gold against KL\n\n{plots}\n\n{alarm}\n"
            f"## SER Table 1 per world\n\n`ser.ppo=false`: the seed RM (Loop 0), the kept self-labelling loop (SER) and "
            f"the run's pairwise loss on every labelled pair (Full); test = data.pref_eval, also split into pairs "
            f"whose answers have equal and unequal length in words (docs/SER.md). One table per SER setting: the "
            f"defaults, the other retraining mode and a lower tau_Delta at which Status 2 can be reached."
            f"\n\n{_ser_section(design, root)}\n\n"
            f"## Cost: R2M vs vanilla RLOO (R2M Figure 7)\n\n`bench_cost` for {cost_steps} steps on this preset's "
            f"`length` world; methods in benchmarks/README.md.\n\n{format_cost(cost, markdown=True)}\n\n"
            f"## Run wall times\n\nFrom each run's `bench14.json` (a run read from an earlier invocation keeps its "
            f"own time).\n\n{_times_table(times)}\n\n"
            f"## Provenance\n\n- commit (this report): `{commit}`\n- runs made at: {_run_commits(times)}\n"
            f"- command: `{command}`\n- runs: {_threads_line(workers)}; "
            f"this process: {torch.get_num_threads()} torch threads, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n- the runs' own wall times add up to "
            f"{_run_minutes(times):.1f} min over {len(times)} runs (a resumed bench keeps each run's time; divide by "
            f"the workers for the elapsed time)\n- wall time of this invocation: {wall_s / 60:.1f} min (design "
            f"{outcome.wall_s / 60:.1f} min; runs found finished are not re-run)\n- CPU results are bit-identical "
            f"only at the same thread count and CPU.\n\n## Reading\n\n{_reading(art, design.name)}\n")


def run_bench_design(cfg: Config, preset: str, out: str | None = None, command: str | None = None,
                     workers: int = 1) -> int:
    """The design of ``preset`` on ``cfg.run.root``, the cost arms, then the report (see the module doc).

    ``workers``: processes for the design's runs (one torch thread each, bench_design_run); ``run.threads``, when
    set, is passed to every run of a one-worker bench."""
    design = design_preset(preset)
    root = str(cfg.run.root)
    out_path = Path(out) if out else default_out(preset, root)
    command = command or "r2m " + shlex.join(sys.argv[1:])
    commit = git_commit()
    t0 = time.perf_counter()
    extra = (f"run.threads={cfg.run.threads}",) if cfg.run.threads else ()
    outcome = run_design(design, root, artefact_dir(preset, out_path), commit=commit, command=command, extra=extra,
                         workers=workers)
    art = artefact_dir(preset, out_path)
    alarm = write_alarm_validation(design, root, outcome.setting, art, os.path.relpath(art, out_path.parent))
    cost = run_cost_bench(design, root, COST_STEPS[preset])
    text = _report(design, outcome, root, out_path, cost, COST_STEPS[preset], command, commit,
                   time.perf_counter() - t0, workers, alarm)
    atomic_write_text(out_path, text)
    print(text)
    return 0
