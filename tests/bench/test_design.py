"""The benchmark's design as data (r2m_bench.design): phases, arms, claims, presets, names, cost."""

from __future__ import annotations

import pytest

from r2m.config.parsing import load_config
from r2m_bench.design import (
    CLAIMS,
    PAPER,
    SMOKE,
    TEST_SEEDS,
    Arm,
    KLRegime,
    Phase,
    Plan,
    SweepPoint,
    claims_in,
    phase_runs,
)
from r2m_bench.phases import estimate_cost

SETTING = SweepPoint(1e-4, "matched", 0.6)
PLAN = Plan({w: (0.05, 0.1, 0.2) for w in ("length", "noisy", "blind")}, {w: 300 for w in ("length", "noisy", "blind")},
            SETTING)


def _runs(design=PAPER, plan=PLAN):
    return [r for p in Phase for r in phase_runs(design, p, plan)]


def test_every_run_of_both_presets_parses_and_names_are_unique() -> None:
    for design in (SMOKE, PAPER):
        runs = _runs(design)
        assert len({r.name for r in runs}) == len(runs)
        for r in runs[:: max(1, len(runs) // 25)]:
            load_config(None, list(r.overrides))


def test_names_do_not_depend_on_the_budgets() -> None:
    """A resumed bench finds its runs even though the budgets are computed: names hold no budget or cap."""
    other = Plan({w: (0.07, 0.14, 0.28) for w in PLAN.budgets}, {w: 123 for w in PLAN.caps}, SETTING)
    assert [r.name for r in _runs(plan=PLAN)] == [r.name for r in _runs(plan=other)]


def test_phases_stop_where_the_design_says() -> None:
    pilot = phase_runs(PAPER, Phase.PILOT)
    assert {r.seed for r in pilot} == {100, 101, 102} and {r.arm for r in pilot} == {Arm.VANILLA}
    assert all("rl.steps=120" in r.overrides and not any("stop_at_kl" in o for o in r.overrides) for r in pilot)
    tuning = phase_runs(PAPER, Phase.TUNING, PLAN)
    assert len(tuning) == 6 * 3 and {r.arm for r in tuning} == {Arm.ORACLE}
    assert all("rl.stop_at_kl=0.1" in r.overrides and "reward.r2m.pair_choice=gold" in r.overrides for r in tuning)
    test = [r for r in phase_runs(PAPER, Phase.TEST, PLAN) if r.arm is not Arm.SER]
    assert all("rl.stop_at_kl=0.2" in r.overrides and "rl.steps=300" in r.overrides for r in test)
    with pytest.raises(ValueError, match="pilot's budgets"):
        phase_runs(PAPER, Phase.TEST, None)


def test_headline_cells_have_ten_seeds_and_every_rl_world_has_the_ladder_and_ceiling() -> None:
    test = phase_runs(PAPER, Phase.TEST, PLAN)
    for w in ("length", "noisy", "blind"):
        for arm in (Arm.VANILLA, Arm.R2M, Arm.ORACLE, Arm.LADDER_10, Arm.LADDER_25, Arm.LADDER_50):
            seeds = {r.seed for r in test if (r.world, r.arm, r.regime) == (w, arm, KLRegime.FIXED)}
            assert seeds == set(TEST_SEEDS), (w, arm)
        assert len({r.seed for r in test if (r.world, r.arm) == (w, Arm.GOLD)}) == 3
    ens = {(r.world, r.arm) for r in test if r.arm.value.startswith("ensemble")}
    assert {w for w, _ in ens} == {"length", "noisy"} and len(ens) == 6
    assert {r.world for r in test if r.arm is Arm.SER} == {"length", "noisy", "blind", "ser_headroom"}


def test_arm_overrides() -> None:
    by = {(r.world, r.arm, r.seed, r.regime): r.overrides for r in phase_runs(PAPER, Phase.TEST, PLAN)}
    assert "reward.gold_mix=0.25" in by[("noisy", Arm.LADDER_25, 3, KLRegime.FIXED)]
    assert "reward.ensemble_seeds=[3,1003,2003,3003]" in by[("length", Arm.ENSEMBLE_UWO, 3, KLRegime.FIXED)]
    kl = by[("length", Arm.R2M, 0, KLRegime.TARGETED)]
    assert {"rl.kl_adaptive=true", "rl.kl_target_level=token", "rl.kl_target=0.1",
            "rl.kl_horizon_batches=10"} <= set(kl)
    # The carried setting: all of it on the R2M family, lr on the Iterative RM-head, Omega on the scale control.
    assert "reward.r2m.init=matched" in by[("length", Arm.RANDOM, 0, KLRegime.FIXED)]
    head = by[("length", Arm.ITERATIVE_HEAD, 0, KLRegime.FIXED)]
    assert "reward.r2m.lr=0.0001" in head and not any("init" in o for o in head)
    assert "reward.r2m.omega_floor=0.6" in by[("length", Arm.SCALE_CONTROL, 0, KLRegime.FIXED)]
    cfg = load_config(None, list(by[("length", Arm.ENSEMBLE_WORST, 1, KLRegime.FIXED)]))
    assert cfg.reward.ensemble_seeds == (1, 1001, 2001, 3001) and cfg.run.seed == 1 and cfg.rl.stop_at_kl == 0.2


def test_primary_claims_are_fixed() -> None:
    primary = sorted({s.claim for s in CLAIMS if s.primary})
    assert primary == ["oracle_vs_vanilla", "r2m_vs_vanilla", "ser_vs_loop0"]
    cells = [c for c in claims_in(PAPER) if c.spec.primary]
    assert sorted((c.world, c.spec.claim) for c in cells) == sorted(
        [(w, c) for w in ("length", "noisy", "blind") for c in ("r2m_vs_vanilla", "oracle_vs_vanilla")]
        + [(w, "ser_vs_loop0") for w in ("length", "noisy", "blind", "ser_headroom")])
    # Everything else is exploratory, and the targeted regime's claims are not primaries.
    assert all(not c.spec.primary for c in claims_in(PAPER) if c.spec.regime is KLRegime.TARGETED)


def test_cost_estimate_fits_six_hours_with_two_workers() -> None:
    cost = estimate_cost(PAPER, workers=2)
    assert set(cost) == {"pilot", "tuning", "test", "total"}
    assert cost["total"].seconds <= 6 * 3600, cost
    assert cost["total"].runs == sum(len(phase_runs(PAPER, p, PLAN)) for p in Phase)
    assert estimate_cost(PAPER, workers=1)["total"].seconds > cost["total"].seconds


def test_smoke_exercises_every_arm_kind() -> None:
    runs = _runs(SMOKE, Plan({"length": (1e-5, 2e-5, 4e-5)}, {"length": 6}, SETTING))
    arms = {r.arm for r in runs}
    assert {Arm.VANILLA, Arm.R2M, Arm.ORACLE, Arm.LADDER_25, Arm.ENSEMBLE_UWO, Arm.GOLD, Arm.SCALE_CONTROL,
            Arm.SER} <= arms
    assert {r.phase for r in runs} == set(Phase) and KLRegime.TARGETED in {r.regime for r in runs}
    assert len(runs) <= 26
