"""The smoke design's new paths end to end on the tiny world: oracle and random updates, the scale control, the
KL-targeted regime, a bench seed's own RM and the blind world's RM (a few RL steps each)."""

from __future__ import annotations

import math
from pathlib import Path

from r2m.config.parsing import load_config
from r2m.recipes.pipeline import ensure_world_rm
from r2m.recipes.bench_design import SMOKE, Arm, KLRegime, design_runs
from r2m.recipes.bench_verdicts import rl_result
from r2m.runtime.runlog import read_metrics
from r2m.recipes.rl.run import run_rl


def _pick(world: str, arm: Arm, regime: KLRegime = KLRegime.FIXED):
    (spec,) = [r for r in design_runs(SMOKE) if (r.world, r.arm, r.regime, r.seed) == (world, arm, regime, 0)]
    return spec


def test_smoke_runs_of_the_new_arms(tiny, world_artifacts) -> None:
    root = next(o for o in tiny if o.startswith("run.root=")).split("=", 1)[1]
    specs = [_pick("length", Arm.ORACLE, KLRegime.TARGETED), _pick("length", Arm.RANDOM),
             _pick("length", Arm.SCALE_CONTROL), _pick("blind", Arm.R2M)]
    for spec in specs:
        cfg = load_config(None, [*tiny, *spec.overrides, "rl.steps=2", "rl.eval_every=1"])
        res = run_rl(cfg)
        evals = [r for r in read_metrics(Path(root) / spec.name / "metrics.jsonl") if "eval/gold" in r]
        result = rl_result(spec, evals, res.rm_accuracy)
        assert len(result.trajectory.steps) >= 2 and all(math.isfinite(g) for g in result.trajectory.golds)
        train = [r for r in res.history if "r2m/bt" in r]
        if spec.arm in (Arm.ORACLE, Arm.RANDOM, Arm.R2M):
            assert train and all(math.isfinite(r["r2m/bt"]) for r in train), spec.name
        else:
            assert not train, spec.name
        if spec.regime is KLRegime.TARGETED:
            assert cfg.rl.kl_adaptive and cfg.rl.kl_target == SMOKE.kl_target
    # Seed 0 has its own RM (world.rm_seed=0), apart from the default world's; the blind world's is another.
    default_rm = world_artifacts[1]
    seed_rm = ensure_world_rm(load_config(None, [*tiny, *specs[1].overrides]))
    blind_rm = ensure_world_rm(load_config(None, [*tiny, *specs[3].overrides]))
    assert len({str(default_rm), str(seed_rm), str(blind_rm)}) == 3
