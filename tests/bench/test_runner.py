"""The phases of a bench design (r2m_bench.runner), with RL and SER faked: budgets from the pilot, the oracle-
scored tuning, the barrier between phases, trajectories.json and the resume."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

import r2m_bench.runner as runner
from r2m.recipes.rl.reports import movement
from r2m_bench.design import Arm, BenchDesign, Cell, Phase, Plan, Sweep, phase_runs
from r2m_bench.runner import RESULT_FILE, run_design
from r2m_bench.trajectories import read_trajectories

DESIGN = BenchDesign(
    name="fake", cells=(Cell("length", "RLOO", (Arm.VANILLA,), (100, 101), phase=Phase.PILOT),
                        Cell("length", "RLOO", (Arm.VANILLA, Arm.ORACLE, Arm.R2M), (0, 1))),
    base=(), pilot_steps=40, sweep=Sweep("length", (1e-5, 1e-4), ("random",), (0.6,)), tuning_seeds=(100, 101),
    ser_worlds=("noisy",), ser_seeds=(0, 1), cap_factor=2.0)
KLS = (0.0, 0.03, 0.07, 0.12, 0.2)
GOLD = (0.6, 0.65, 0.7, 0.66, 0.6)
"""Vanilla's gold peaks at KL 0.07 (evaluation 2): budgets 0.07, 0.14, 0.28."""


def _fake_rl(seen):
    def run_rl(cfg):
        seen.append((cfg.run.name, cfg.rl.steps, cfg.rl.stop_at_kl, cfg.reward.r2m.lr))
        lift = 0.0
        if cfg.reward.r2m.pair_choice.value == "gold":
            lift = 0.05 if cfg.reward.r2m.lr == 1e-4 else 0.01
        d = Path(cfg.run.root) / cfg.run.name
        d.mkdir(parents=True, exist_ok=True)
        # evaluations at 0, 1/4, ..., 4/4 of the run's steps: it stops at its cap, as a capped run does
        rows = [{"step": cfg.rl.steps * i // 4, "eval/kl": k, "eval/gold": g + lift * (i > 0), "eval/proxy": 0.1 * i}
                for i, (k, g) in enumerate(zip(KLS, GOLD))]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "samples").mkdir(exist_ok=True)  # an evaluation's samples: 2 prompts x 4, as RunLog.log_samples
        golds = {"a": (1.0, 0.0, 1.0, 0.0), "b": (0.7,) * 4}
        (d / "samples" / "step_000010.jsonl").write_text("".join(
            json.dumps({"step": 10, "prompt": p, "gold": g}) + "\n" for p, gs in golds.items() for g in gs))
        move = {"r2m/weight_change": 0.02, "r2m/fusion_weight_change": 0.02} if cfg.reward.r2m.enabled else None
        return SimpleNamespace(rm_accuracy={}, r2m_movement=move, stop_kl=0.2, stop_reason="step_cap")
    return run_rl


def test_phases_run_in_order_and_resume(tmp_path, monkeypatch) -> None:
    seen: list = []
    monkeypatch.setattr(runner, "run_rl", _fake_rl(seen))
    monkeypatch.setattr(runner, "run_ser", lambda cfg: SimpleNamespace(
        table=(["method", "a", "b", "acc"], [["Loop 0", 0, 0, 0.7], ["SER", 0, 0, 0.72], ["Full", 0, 0, 0.8]]),
        history=[{"loop": 0, "status": "seed", "ser/selected": 10, "ser/selected_frac": 0.1, "ser/val_acc": 0.7,
                  "ser/test_acc": 0.7}], stop={"reason": "max_loops", "loop": 0}))
    root, out = str(tmp_path / "runs"), tmp_path / "out"
    outcome = run_design(DESIGN, root, out, command="test")
    budgets = json.loads((out / "budgets.json").read_text())["worlds"]["length"]
    assert budgets["budgets"] == [0.07, 0.14, 0.28] and budgets["primary"] == 0.14
    assert budgets["step_cap"] == 80  # 0.28 never reached: cap_factor x the pilot's 40 steps
    # Within-prompt variances 1/3 and 0: sqrt(mean 1/6 over 8 samples) = sqrt(1/48)
    assert budgets["eval_point_se"] == pytest.approx(48 ** -0.5) and budgets["eval_samples_per_prompt"] == 4
    assert budgets["eval_samples_per_prompt_needed"] is None  # the fake seeds agree: no seed-to-seed spread
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["chosen"] == {"lr": 1e-4, "init": "random", "omega_floor": 0.6}
    assert tuning["grid"][1]["mean_gain"] == pytest.approx(0.05)
    assert tuning["grid"][0]["fusion_weight_change"] == [0.02] * 2 and tuning["grid"][0]["learns"]
    # The pilot ran before any tuning run, the tuning before any test run; the test runs carry the setting.
    phases = [n.split("-")[2] for n, *_ in seen]
    assert phases == sorted(phases, key=["pilot", "tuning", "test"].index)
    test = [s for s in seen if "-test-" in s[0]]
    assert all(steps == 80 and stop == 0.28 for _, steps, stop, _ in test)
    assert {lr for n, _, _, lr in test if "-r2m-" in n or "-oracle-" in n} == {1e-4}
    traj = read_trajectories(out / "trajectories.json")
    assert len(traj.runs) == 2 + 4 + 6 + 2 and traj.plan.setting.lr == 1e-4
    ser = [r for r in traj.runs if r.arm is Arm.SER]
    assert ser[0].scalars["ser/loops"] == 0 and ser[0].stop_reason == "max_loops"
    assert all((Path(root) / n / RESULT_FILE).is_file() for n, *_ in seen)
    n = len(seen)
    run_design(DESIGN, root, out, command="test")  # everything done: nothing reruns
    assert len(seen) == n and outcome.plan.caps == {"length": 80}


def test_an_r2m_run_records_its_fusions_movement(tmp_path, monkeypatch) -> None:
    """The run's scalars hold r2m/fusion_weight_change (the inactive rule reads it), from the last GREBT row of
    its history through RLResult.r2m_movement (r2m.recipes.rl.reports.movement), beside the fusion+head change."""
    history = [{"step": 1, "r2m/weight_change": 0.01, "r2m/fusion_weight_change": 0.002,
                "r2m/fusion_spread_share": 0.3},
               {"step": 2, "r2m/weight_change": 0.03, "r2m/fusion_weight_change": 0.007,
                "r2m/fusion_spread_share": 0.5}]

    def run_rl(cfg):
        d = Path(cfg.run.root) / cfg.run.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.jsonl").write_text(json.dumps({"step": 2, "eval/kl": 0.1, "eval/gold": 0.7}) + "\n")
        return SimpleNamespace(rm_accuracy={}, r2m_movement=movement(history), stop_kl=0.1, stop_reason="kl_reached")

    monkeypatch.setattr(runner, "run_rl", run_rl)
    spec = [s for s in phase_runs(DESIGN, Phase.TEST, Plan({"length": (0.1,)}, {"length": 10}, None))
            if s.arm is Arm.R2M][0]
    saved = runner.run_one(spec, str(tmp_path))
    assert saved["scalars"]["r2m/fusion_weight_change"] == 0.007
    assert saved["scalars"]["r2m/weight_change"] == 0.03
    assert saved["scalars"]["r2m/fusion_spread_share"] == pytest.approx(0.4)


def test_samples_needed_scale_as_the_inverse_square_of_the_error() -> None:
    """SE 0.01 at 4 samples against a seed SD of 0.01: half the SD is 0.005, so 4 x (0.01 / 0.005)^2 = 16."""
    from r2m_bench.phases import samples_needed
    from r2m_bench.trajectories import EvalNoise

    assert samples_needed(EvalNoise(0.01, 4), 0.01) == 16
    assert samples_needed(EvalNoise(0.001, 4), 0.01) == 1
    assert samples_needed(None, 0.01) is None and samples_needed(EvalNoise(0.01, 4), None) is None


def test_eval_noise_pools_repeated_prompts_and_skips_step_zero(tmp_path) -> None:
    """Prompt a: 4 samples (variance 1/3); b: 4 (0); c's text appears twice, 8 samples 1, 0, ... (variance 2/7);
    d: one sample (left out). SE = sqrt((4/3 + 0 + 8 * 2/7) / 16²) = 0.11890; the common count is 4. Step 0's
    samples (the initial policy) are not read."""
    from r2m_bench.trajectories import eval_noise

    (tmp_path / "samples").mkdir()
    golds = {"a": (1.0, 0.0, 1.0, 0.0), "b": (0.7,) * 4, "c": (1.0, 0.0) * 4, "d": (0.3,)}
    rows = [{"step": 10, "prompt": p, "gold": g} for p, gs in golds.items() for g in gs]
    (tmp_path / "samples" / "step_000010.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "samples" / "step_000000.jsonl").write_text(json.dumps({"step": 0, "prompt": "a", "gold": 5.0}) + "\n"
                                                            + json.dumps({"step": 0, "prompt": "a", "gold": -5.0}))
    noise = eval_noise(tmp_path)
    assert noise.se == pytest.approx(((4 / 3 + 8 * 2 / 7) / 256) ** 0.5)
    assert noise.se == pytest.approx(0.11890, abs=1e-5)
    assert noise.samples_per_prompt == 4
    assert eval_noise(tmp_path / "missing") is None


def test_tuning_reads_capped_runs_at_their_kl_and_carries_a_fusion_that_moves() -> None:
    """Vanilla reaches KL 0.2; an oracle capped at KL 0.12 is read at 0.12 (primary 0.14), one capped at 0.06 (under
    half the budget) is not read. Among complete points the one whose fusion moves is carried even with a smaller
    gain; with none moving, the largest gain."""
    from r2m.eval.trajectory import trajectory
    from r2m_bench.design import SweepPoint
    from r2m_bench.phases import GridPoint, choose_setting, matched_gain

    vanilla = trajectory((0, 10, 20), (0.0, 0.1, 0.2), (0.6, 0.7, 0.6))
    capped = trajectory((0, 10, 20), (0.0, 0.06, 0.12), (0.6, 0.8, 0.9))
    gain, k = matched_gain(capped, vanilla, 0.14)
    assert k == 0.12 and gain == pytest.approx(0.9 - 0.68)  # vanilla at 0.12: 0.7 + 0.2 x (0.6 - 0.7)
    assert matched_gain(trajectory((0, 10), (0.0, 0.06), (0.6, 0.8)), vanilla, 0.14) == (None, 0.06)
    assert matched_gain(None, vanilla, 0.14) == (None, None)
    # a vanilla trajectory with no point under k (it starts past it): no gain, no crash
    late = trajectory((10, 20), (0.1, 0.2), (0.7, 0.6))
    assert matched_gain(trajectory((0, 10), (0.0, 0.09), (0.6, 0.8)), late, 0.14) == (None, 0.09)
    frozen = GridPoint(SweepPoint(1e-5, "matched", 0.6), (0.05, 0.05), (0.14, 0.14), (1e-4, 2e-4))
    moving = GridPoint(SweepPoint(1e-4, "random", 0.6), (0.01, 0.02), (0.14, 0.12), (0.05, 0.06))
    incomplete = GridPoint(SweepPoint(1e-3, "random", 0.6), (0.2, None), (0.14, 0.06), (0.5, 0.5))
    assert not frozen.learns and moving.learns
    assert choose_setting([frozen, moving, incomplete]) == moving.setting
    assert choose_setting([frozen, incomplete]) == frozen.setting
    assert choose_setting([incomplete]) is None


def test_a_run_made_under_another_cap_is_set_aside_and_run_again(tmp_path, monkeypatch) -> None:
    """The design now caps at 450. A saved run made under cap 270 is stale when it stopped at that cap, and, for an
    arm carrying R2M's setting (ω decays over rl.steps), whatever stopped it; a vanilla run that stopped at its KL
    budget is kept. Legacy results name their cap in config.yaml. A stale folder moves to ``<name>.cap270``."""
    vanilla = phase_runs(DESIGN, Phase.PILOT, None)[0]
    vanilla = vanilla._replace(overrides=(*vanilla.overrides, "rl.steps=450"))
    oracle = vanilla._replace(arm=Arm.ORACLE)
    capped = {"evals": [{"step": 270}], "stop_reason": "step_cap", "scalars": {}, "steps_cap": 270}
    by_kl = {**capped, "stop_reason": "kl_reached"}
    d = tmp_path / "x"
    assert runner.stale_cap(vanilla, capped, d) == 270 and runner.stale_cap(vanilla, by_kl, d) is None
    assert runner.stale_cap(oracle, by_kl, d) == 270
    assert runner.stale_cap(oracle, {**by_kl, "steps_cap": 450}, d) is None
    # made under a larger cap and stopped by KL past the new one: it would have stopped at the cap
    assert runner.stale_cap(vanilla, {**by_kl, "evals": [{"step": 500}], "steps_cap": 600}, d) == 600
    legacy = {k: v for k, v in capped.items() if k != "steps_cap"}
    assert runner.stale_cap(vanilla, legacy, d) is None  # nothing says its cap: kept
    run_dir = tmp_path / vanilla.name
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("run:\n  name: x\nrl:\n  steps: 270\n")
    assert runner.stale_cap(vanilla, legacy, run_dir) == 270
    (run_dir / RESULT_FILE).write_text(json.dumps(legacy))
    (run_dir / "metrics.jsonl").write_text("kept\n")
    monkeypatch.setattr(runner, "_rl_saved", lambda s, root, extra: {"evals": [{"step": 450}], "scalars": {},
                                                                      "stop_reason": "step_cap"})
    saved = runner.run_one(vanilla, str(tmp_path))
    assert saved["evals"] == [{"step": 450}] and saved["steps_cap"] == 450
    assert (tmp_path / f"{vanilla.name}.cap270" / "metrics.jsonl").read_text() == "kept\n"
    assert json.loads((run_dir / RESULT_FILE).read_text())["steps_cap"] == 450
