"""KL-matched runs: the adaptive controller's horizon in batches and per-token target (hand-worked, then a tiny-world
run that ends near its target), and KL-stopped runs (rl.stop_at_kl) with their stop record and resume."""

from __future__ import annotations

import pytest

from r2m.config.parsing import load_config
from r2m.config.training import RLConfig
from r2m.errors import ConfigError
from r2m.recipes.rl.setup import kl_controller, kl_horizon


def test_the_horizon_in_batches_moves_beta_by_the_expected_factor_per_step() -> None:
    """4 prompts × 2 samples = 8 per step, horizon 10 batches = 80 samples: each step moves β by
    1 + clip(KL/T − 1, ±0.2) · 8/80, at most ±2%. Target 0.05 per token:
    KL 0.10 -> e = +1 clipped to +0.2: × 1.02;  KL 0.04 -> e = −0.2: × 0.98;  KL 0.055 -> e = +0.1: × 1.01."""
    rl = RLConfig(prompts_per_step=4, k=2, kl_adaptive=True, kl_target=0.05, kl_target_level="token",
                  kl_horizon_batches=10, beta=0.1)
    assert kl_horizon(rl) == 80  # prompts_per_step is the global batch: the same at any process count
    ctl = kl_controller(rl)
    expected = 0.1
    for kl, factor in ((0.10, 1.02), (0.04, 0.98), (0.055, 1.01)):
        ctl.update(kl, 8)
        expected *= factor
        assert ctl.value == pytest.approx(expected, rel=1e-12)
    assert kl_horizon(RLConfig()) == 10000  # 0 batches: rl.kl_horizon samples (TRL's)
    with pytest.raises(ConfigError, match="rl.kl_horizon_batches"):
        RLConfig(kl_horizon_batches=-1)


def _run(tiny, *overrides):
    from r2m.recipes.rl.run import run_rl

    return run_rl(load_config(None, [*tiny, "rl.lr=1e-3", "rl.monitor.enabled=false", *overrides]))


def test_a_per_token_target_is_reached_in_the_tiny_world(tiny, world_artifacts) -> None:
    """Target 0.03 per token, horizon 1 batch (β moves up to ±20% a step), β₀ = 0.05: at that β the policy's KL
    runs past 3× the target by step 8; the controller raises β and the last 4 steps' KL ends within [T/2, 2T]."""
    T = 0.03
    res = _run(tiny, "run.name=kl-target", "rl.steps=24", "rl.prompts_per_step=8", "rl.k=4", "rl.lr=5e-4",
               "rl.kl_adaptive=true", "rl.kl_target_level=token", f"rl.kl_target={T}", "rl.kl_horizon_batches=1",
               "rl.beta=0.05", "rl.eval_every=8")
    rows = [r for r in res.history if "kl" in r]
    assert max(r["kl"] for r in rows[:12]) > 3 * T  # the policy ran away from the reference first
    end = sum(r["kl"] for r in rows[-4:]) / 4
    assert T / 2 <= end <= 2 * T, end
    assert rows[-1]["kl/beta"] > 2 * 0.05  # by raising β


CORE = ("kl", "reward/proxy", "eval/kl", "eval/gold")


def _core(history, last):
    return [{k: r[k] for k in CORE if k in r} for r in history if 0 < r["step"] <= last]


@pytest.fixture(scope="module")
def kl_stopped(tiny, world_artifacts):
    """rl.stop_at_kl=0.05 with a cap of 8 steps: eval/kl passes 0.05 at step 5 (0.036, 0.041, 0.041, then 0.059)."""
    return _run(tiny, "run.name=kl-stop", "rl.steps=8", "rl.stop_at_kl=0.05")


def test_a_kl_stopped_run_stops_at_the_first_evaluation_past_the_kl(kl_stopped) -> None:
    res = kl_stopped
    evals = [r for r in res.history if r["step"] > 0 and "eval/kl" in r]
    assert res.stop_reason == "kl_reached" and res.stop_step == 5 and int(res.history[-1]["step"]) == 5
    assert all(r["eval/kl"] < 0.05 for r in evals[:-1]) and evals[-1]["eval/kl"] >= 0.05
    last = res.history[-1]
    assert last["stop/kl_reached"] == 1.0 and last["stop/step"] == 5 and last["stop/eval_kl"] == res.stop_kl
    assert (res.run_dir / "checkpoints" / "step-000005").is_dir()


def test_the_step_cap_is_recorded_and_a_resumed_run_stops_at_the_same_step(tiny, kl_stopped) -> None:
    """Capped at 3 steps first (step_cap, with the KL reached), then resumed with the cap raised to 8 (rl.steps and
    rl.stop_at_kl are resume-free): it stops at step 5 on the uninterrupted run's trajectory; resumed once more, it
    trains nothing and reports the same stop."""
    capped = _run(tiny, "run.name=kl-stop-resumed", "rl.steps=3", "rl.stop_at_kl=0.05")
    assert capped.stop_reason == "step_cap" and capped.stop_step == 3
    assert capped.history[-1]["stop/kl_reached"] == 0.0 and capped.stop_kl == capped.history[-1]["eval/kl"] < 0.05
    resumed = _run(tiny, "run.name=kl-stop-resumed", "rl.steps=8", "rl.stop_at_kl=0.05", "run.resume=auto")
    assert resumed.stop_reason == "kl_reached" and resumed.stop_step == 5
    assert _core(resumed.history, 5) == _core(kl_stopped.history, 5)
    again = _run(tiny, "run.name=kl-stop-resumed", "rl.steps=8", "rl.stop_at_kl=0.05", "run.resume=auto")
    assert again.stop_reason == "kl_reached" and again.stop_step == 5 and int(again.history[-1]["step"]) == 5


def test_stop_at_kl_needs_evaluations(tiny, world_artifacts, tmp_path) -> None:
    """A user's models with no data.eval_prompts: the run would not evaluate, so it could never stop at a KL."""
    import shutil

    from r2m.recipes.rl.build import build_run

    policy, rm, files = world_artifacts
    shutil.copytree(policy, tmp_path / "policy")
    shutil.copytree(rm, tmp_path / "rm")
    with pytest.raises(ConfigError, match="rl.stop_at_kl: reads the evaluation's KL"):
        build_run(load_config(None, [*tiny, "rl.stop_at_kl=0.1", f"policy.path={tmp_path / 'policy'}",
                                     f"reward.path={tmp_path / 'rm'}", f"data.prompts={files.prompts}"]))
