"""Verdicts of a constructed bench result (r2m_bench.verdicts)."""

from __future__ import annotations

import json

import pytest

from r2m.eval.trajectory import trajectory
from r2m_bench.design import Arm, BenchDesign, Cell, KLRegime, RunSpec
from r2m_bench.frontier import Claim, Verdict
from r2m_bench.verdicts import (
    RunResult,
    frontier_curves,
    rl_result,
    ser_result,
    verdict_records,
    verdict_table,
    write_bench_verdicts,
)

DESIGN = BenchDesign(
    name="t", cells=(Cell("length", "RLOO", (Arm.VANILLA, Arm.R2M, Arm.ORACLE, Arm.RANDOM), (0, 1, 2, 3, 4)),
                     Cell("length", "RLOO", (Arm.VANILLA, Arm.ORACLE), (0, 1, 2, 3, 4), KLRegime.TARGETED)),
    base=(), steps=30, sweep=None, ser_worlds=("noisy",), ser_seeds=(0, 1, 2, 3, 4), budgets=(0.1, 0.2, 0.4),
    headline_budget=0.2, kl_target=0.2)


def _traj(seed: int, lift: float, reach: float = 0.3):
    # KL 0, 0.1, 0.2, reach; gold rises 0.6 -> 0.7 -> 0.75 and then falls; `lift` is added everywhere but at 0
    jitter = 0.01 * ((seed * 7) % 5 - 2)  # seed-to-seed variation shared by every arm (the pairing removes it)
    return trajectory([0, 10, 20, 30], [0.0, 0.1, 0.2, reach],
                      [0.6, 0.7 + lift + jitter, 0.75 + lift + jitter, 0.65 + lift + jitter])


def _results() -> list[RunResult]:
    out = []
    for seed in range(5):
        noise = 0.004 * (seed - 2)  # a small, mean-zero per-seed difference for the random arm
        for arm, lift in ((Arm.VANILLA, 0.0), (Arm.R2M, -0.05), (Arm.ORACLE, 0.08), (Arm.RANDOM, noise)):
            acc = {"rm_acc/vanilla": 0.80, "rm_acc/r2m_after": 0.83 + 0.002 * seed} if arm is Arm.R2M else {}
            out.append(RunResult("length", "RLOO", arm, seed, KLRegime.FIXED, _traj(seed, lift), acc))
        for arm, lift in ((Arm.VANILLA, 0.0), (Arm.ORACLE, 0.05)):
            out.append(RunResult("length", "RLOO", arm, seed, KLRegime.TARGETED, _traj(seed, lift), {}))
        spec = RunSpec(f"ser-{seed}", "noisy", "SER", Arm.SER, seed, KLRegime.FIXED, ())
        out.append(ser_result(spec, [["Loop 0", 0, 0, 0.70 + 0.01 * seed], ["SER", 0, 0, 0.75 + 0.01 * seed],
                                     ["Full", 0, 0, 0.75 + 0.01 * seed + 0.001 * (seed - 2)]]))
    return out


def _find(records, claim: Claim, metric: str, world: str = "length"):
    (rec,) = [r for r in records if r.claim is claim and r.metric == metric and r.world == world]
    return rec


def test_verdicts_find_the_known_differences() -> None:
    recs = verdict_records(_results(), DESIGN, resamples=2000)
    oracle = _find(recs, Claim.ORACLE_VS_VANILLA, "gold@kl=0.2")
    assert oracle.verdict is Verdict.BETTER and oracle.diff_mean == pytest.approx(0.08)
    assert oracle.seeds == (0, 1, 2, 3, 4)
    r2m = _find(recs, Claim.R2M_VS_VANILLA, "gold@kl=0.1")
    assert r2m.verdict is Verdict.WORSE and r2m.diff_mean == pytest.approx(-0.05)
    # KL 0.2 is an evaluation point of every run; 0.4 is never reached (too few pairs, nothing extrapolated).
    assert _find(recs, Claim.RANDOM_VS_VANILLA, "gold@kl=0.2").verdict is Verdict.NO_DIFFERENCE
    unreached = _find(recs, Claim.R2M_VS_VANILLA, "gold@kl=0.4")
    assert unreached.verdict is Verdict.TOO_FEW_PAIRS and unreached.seeds == ()
    assert _find(recs, Claim.R2M_VS_VANILLA, "final_gold").diff_mean == pytest.approx(-0.05)
    acc = _find(recs, Claim.R2M_RM_ACC_VS_VANILLA, "rm_acc/r2m_after - rm_acc/vanilla")
    assert acc.verdict is Verdict.BETTER and acc.diff_mean == pytest.approx(0.034)
    assert _find(recs, Claim.SER_VS_LOOP0, "ser/test_acc - ser/loop0_test_acc", "noisy").verdict is Verdict.BETTER
    assert _find(recs, Claim.SER_VS_FULL, "ser/test_acc - ser/full_test_acc", "noisy").verdict is Verdict.NO_DIFFERENCE
    targeted = _find(recs, Claim.ORACLE_VS_VANILLA, "final_gold@kl_target=0.2")
    assert targeted.verdict is Verdict.BETTER and targeted.diff_mean == pytest.approx(0.05)
    # Claims whose arms are not in the design are not decided.
    assert not [r for r in recs if r.claim is Claim.R2M_VS_PRETRAINED_RM]


def test_interpolated_budget_hand_worked() -> None:
    # A budget between two points: vanilla seed 2 (jitter 0) at KL 0.15 -> 0.7 + 0.5 * (0.75 - 0.7) = 0.725.
    design = BenchDesign(**{**DESIGN.__dict__, "budgets": (0.15, 0.2)})
    recs = verdict_records(_results(), design, resamples=500)
    rec = _find(recs, Claim.ORACLE_VS_VANILLA, "gold@kl=0.15")
    assert rec.diff_mean == pytest.approx(0.08)  # both arms interpolate on the same segment


def test_a_seed_missing_from_one_arm_is_dropped_not_imputed() -> None:
    results = [r for r in _results() if not (r.arm is Arm.ORACLE and r.seed == 4)]
    rec = _find(verdict_records(results, DESIGN, resamples=500), Claim.ORACLE_VS_VANILLA, "gold@kl=0.2")
    assert rec.seeds == (0, 1, 2, 3)


def test_duplicate_runs_are_refused() -> None:
    results = _results()
    with pytest.raises(ValueError, match="two runs"):
        verdict_records(results + results[:1], DESIGN, resamples=100)


def test_verdicts_json_and_table(tmp_path) -> None:
    path = tmp_path / "bench" / "verdicts.json"
    recs = write_bench_verdicts(path, _results(), DESIGN, commit="abc1234", command="r2m bench run --preset t",
                                resamples=500)
    doc = json.loads(path.read_text())
    assert doc["commit"] == "abc1234" and doc["command"].startswith("r2m bench")
    assert len(doc["verdicts"]) == len(recs)
    one = doc["verdicts"][0]
    assert list(one) == ["world", "algorithm", "claim", "metric", "seeds", "diff_mean", "ci95", "verdict"]
    table = verdict_table(recs, DESIGN)
    assert table.startswith("| claim |")
    assert "| `oracle_vs_vanilla` |" in table and "gold@kl=0.2" in table and "gold@kl=0.1 " not in table
    assert table.index("`r2m_vs_vanilla`") < table.index("`oracle_vs_vanilla`") < table.index("`ser_vs_loop0`")


def test_rl_result_reads_metrics_rows() -> None:
    spec = RunSpec("x", "length", "RLOO", Arm.R2M, 3, KLRegime.FIXED, ())
    rows = [{"step": 0, "eval/gold": 0.6, "eval/kl": 0.0}, {"step": 1, "loss": 1.0},
            {"step": 10, "eval/gold": 0.7, "eval/kl": 0.12}]
    r = rl_result(spec, rows, {"rm_acc/vanilla": 0.8})
    assert r.trajectory.steps == (0, 10) and r.trajectory.kls == (0.0, 0.12) and r.seed == 3
    curves = frontier_curves(_results())
    assert set(curves) == {"length"} and len(curves["length"]["RLOO oracle"]) == 5


def test_matched_kl_table_hand_worked() -> None:
    from r2m_bench.verdicts import matched_kl_table

    runs = [RunResult("length", "RLOO", Arm.VANILLA, s, KLRegime.FIXED,
                      trajectory([0, 10, 20], [0.0, 0.2, reach], [0.6, 0.7, 0.8]), {})
            for s, reach in ((0, 0.4), (1, 0.3))]
    table = matched_kl_table(runs, (0.1, 0.35))
    row = table.splitlines()[2]
    # KL 0.1: half way to 0.2 in both runs -> 0.65; KL 0.35: only run 0 (0.7 + 0.75 * 0.1 = 0.775).
    assert "| 0.650 ± 0.000 (2/2) | 0.775 ± 0.000 (1/2) |" in row
    assert "0.800 ± 0.000 at KL 0.350 ± 0.071, step 20.000 ± 0.000" in row
