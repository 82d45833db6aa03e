"""Why the positive control does (not) beat vanilla: the oracle update at the carried lr and at 1e-4.

    OMP_NUM_THREADS=1 python benchmarks/oracle_lr.py RUN_ROOT [--workers 2]

The paper bench carries the sweep's best R2M setting to every R2M-family arm, the oracle included. When
that setting's lr is small the oracle's online update barely moves the fusion and the head, and the
positive control tests nothing. This runs the oracle arm of every RLOO cell of the paper preset again with
lr 1e-4 (the sweep's top; init and Omega as carried), on the same test seeds and RM seeds, into the same
RUN_ROOT as the bench (its vanilla runs are the pairs), and prints, per world, the paired difference
oracle - vanilla at each KL budget (95% bootstrap interval, the bench's own functions) and the fusion's
share of the within-group reward spread (``r2m/fusion_share``, the mean of the last 10 steps). Resumable
like the bench (each run's bench14.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from r2m.core.frontier import eval_trajectory, gold_at_kl, paired_bootstrap
from r2m.recipes.bench_design import PAPER, Arm, KLRegime, SweepPoint, design_runs
from r2m.recipes.bench_design_run import RESULT_FILE, run_all
from r2m.runtime.runlog import read_metrics


def _fusion_share(run_dir: Path) -> float:
    rows = [r["r2m/fusion_share"] for r in read_metrics(run_dir / "metrics.jsonl") if "r2m/fusion_share" in r]
    return statistics.fmean(rows[-10:]) if rows else float("nan")


def _gold(root: Path, spec, budget: float):
    evals = json.loads((root / spec.name / RESULT_FILE).read_text())["evals"]
    return gold_at_kl(eval_trajectory(evals), budget).gold


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--carried", default="1e-06,matched,0.8", help="the bench's carried setting: lr,init,Omega")
    args = p.parse_args()
    root = Path(args.root)
    lr, init, omega = args.carried.split(",")
    carried = SweepPoint(float(lr), init, float(omega))
    high = SweepPoint(1e-4, init, float(omega))
    fixed = lambda specs, arm: [s for s in specs if s.arm is arm and s.regime is KLRegime.FIXED  # noqa: E731
                                and s.algorithm == "RLOO"]
    oracle_high = fixed(design_runs(PAPER, high), Arm.ORACLE)
    run_all(oracle_high, str(root), (), args.workers)
    specs = {"carried": fixed(design_runs(PAPER, carried), Arm.ORACLE), "1e-4": oracle_high}
    vanilla = fixed(design_runs(PAPER, carried), Arm.VANILLA)
    print("| world | oracle lr | budget | oracle - vanilla | 95% CI | verdict | fusion share |")
    print("|---|---|---|---|---|---|---|")
    for world in sorted({s.world for s in vanilla}):
        van = [s for s in vanilla if s.world == world]
        for tag, runs in specs.items():
            ora = [s for s in runs if s.world == world]
            share = statistics.fmean(_fusion_share(root / s.name) for s in ora)
            for b in PAPER.budgets:
                res = paired_bootstrap({s.seed: _gold(root, s, b) for s in ora}, {s.seed: _gold(root, s, b) for s in van})
                print(f"| {world} | {tag} | {b:g} | {res.diff_mean:+.4f} | [{res.ci95[0]:+.4f}, {res.ci95[1]:+.4f}] | "
                      f"{res.verdict.value} ({len(res.seeds)} pairs) | {share:.3f} |")


if __name__ == "__main__":
    main()
