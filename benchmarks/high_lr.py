"""R2M-family arms at the carried lr and at 1e-4: does the positive control pass, and does R2M then gain?

    OMP_NUM_THREADS=1 python benchmarks/high_lr.py RUN_ROOT [--workers 2] [--arms oracle,r2m,random]

The paper bench carries the sweep's best R2M setting to every R2M-family arm, the oracle included. When
that setting's lr is small the oracle's online update barely moves the fusion and the head, and the
positive control tests nothing. This runs the chosen arms (default: the oracle) of every RLOO cell of the
paper preset again with lr 1e-4 (the sweep's top; init and Omega as carried), on the same test seeds and
RM seeds, into the same RUN_ROOT as the bench (its vanilla runs are the pairs), and prints, per world and
arm, the paired difference arm - vanilla at each KL budget (95% bootstrap interval, the bench's own
functions) and the fusion's share of the within-group reward spread (``r2m/fusion_share``, the mean of the
last 10 steps). R2M at 1e-4 is not a tuned setting: the lr is the one where the oracle passes, and the
random control at the same lr says how much of any gain the larger update's scale alone explains.
Resumable like the bench (each run's bench14.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

from r2m.eval.trajectory import eval_trajectory, gold_at_kl
from r2m.runtime.runlog import read_metrics
from r2m_bench.design import PAPER, Arm, KLRegime, SweepPoint, design_runs
from r2m_bench.frontier import paired_bootstrap
from r2m_bench.runner import RESULT_FILE, run_all


def _fusion_share(run_dir: Path) -> float:
    rows = [r["r2m/fusion_share"] for r in read_metrics(run_dir / "metrics.jsonl") if "r2m/fusion_share" in r]
    return statistics.fmean(rows[-10:]) if rows else float("nan")


@functools.lru_cache(maxsize=None)
def _trajectory(run_dir: Path):
    """A run's evaluation points, read once (every budget, and every arm paired with the same vanilla run)."""
    return eval_trajectory(json.loads((run_dir / RESULT_FILE).read_text())["evals"])


def _gold(root: Path, spec, budget: float):
    return gold_at_kl(_trajectory(root / spec.name), budget).gold


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--carried", default="1e-06,matched,0.8", help="the bench's carried setting: lr,init,Omega")
    p.add_argument("--arms", default="oracle", help="comma-separated R2M-family arms (oracle, r2m, random, ...)")
    args = p.parse_args()
    root = Path(args.root)
    lr, init, omega = args.carried.split(",")
    carried = SweepPoint(float(lr), init, float(omega))
    high = SweepPoint(1e-4, init, float(omega))
    arms = [Arm(a) for a in args.arms.split(",")]
    fixed = lambda specs, arm: [s for s in specs if s.arm is arm and s.regime is KLRegime.FIXED  # noqa: E731
                                and s.algorithm == "RLOO"]
    run_all([s for arm in arms for s in fixed(design_runs(PAPER, high), arm)], str(root), (), args.workers)
    vanilla = fixed(design_runs(PAPER, carried), Arm.VANILLA)
    print("| world | arm | lr | budget | arm - vanilla | 95% CI | verdict | fusion share |")
    print("|---|---|---|---|---|---|---|---|")
    for world in sorted({s.world for s in vanilla}):
        van = {s.seed: s for s in vanilla if s.world == world}
        for arm in arms:
            for tag, point in (("carried", carried), ("1e-4", high)):
                runs = [s for s in fixed(design_runs(PAPER, point), arm) if s.world == world]
                _rows(root, world, arm, tag, runs, van)


def _rows(root: Path, world: str, arm: Arm, tag: str, runs, vanilla) -> None:
    """One (world, arm, lr) block of the table: the paired difference at every KL budget."""
    share = statistics.fmean(_fusion_share(root / s.name) for s in runs)
    for b in PAPER.budgets:
        res = paired_bootstrap({s.seed: _gold(root, s, b) for s in runs},
                               {seed: _gold(root, s, b) for seed, s in vanilla.items()})
        print(f"| {world} | {arm.value} | {tag} | {b:g} | {res.diff_mean:+.4f} | "
              f"[{res.ci95[0]:+.4f}, {res.ci95[1]:+.4f}] | {res.verdict.value} ({len(res.seeds)} pairs) | "
              f"{share:.3f} |")


if __name__ == "__main__":
    main()
