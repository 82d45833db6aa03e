"""Verdicts (r2m_bench.verdicts) and calibration.json from constructed runs; the report from a constructed
trajectories.json (r2m_bench.report)."""

from __future__ import annotations

import json

import pytest

from r2m_bench.design import CLAIMS, PAPER, R2M_ARMS, Arm, KLRegime, Phase, Plan, SweepPoint, phase_runs
from r2m_bench.report import cell_spec, report_from
from r2m_bench.trajectories import RunRecord, read_trajectories, write_trajectories
from r2m_bench.verdicts import calibration, claim_tests, verdict_records, verdict_table

PLAN = Plan({w: (0.05, 0.1, 0.2) for w in ("length", "noisy", "blind")}, {w: 300 for w in ("length", "noisy", "blind")},
            SweepPoint(1e-4, "random", 0.6))
LIFT = {Arm.ORACLE: 0.05, Arm.LADDER_10: 0.004, Arm.LADDER_25: 0.03, Arm.LADDER_50: 0.06, Arm.GOLD: 0.1}
NOISE = (0.7, -0.3, 0.2, -0.6, 0.1, 0.4, -0.2, 0.5, -0.4, 0.0)


def _record(spec, moves: float = 0.01, ser_loops: int = 1, n_seeds: int = 10, head_moves: float = 0.01,
            record_fusion: bool = True) -> RunRecord | None:
    if spec.seed >= n_seeds:
        return None
    if spec.arm is Arm.SER:
        acc = 0.8 + 0.01 * NOISE[spec.seed]
        return RunRecord(spec.name, spec.phase, spec.world, spec.algorithm, spec.arm, spec.seed, spec.regime, "abc",
                         "max_loops", (), (), (), (), {"ser/test_acc": acc + 0.03 * (ser_loops > 0),
                                                       "ser/loop0_test_acc": acc, "ser/full_test_acc": acc + 0.05,
                                                       "ser/loops": ser_loops})
    lift = LIFT.get(spec.arm, 0.0) + 0.01 * NOISE[spec.seed] * (spec.arm is not Arm.VANILLA)
    kls = (0.0, 0.07, 0.15, 0.25)
    golds = tuple(0.7 + lift * (k > 0) + 0.02 * NOISE[spec.seed] + 0.3 * k for k in kls)
    scalars = {}
    if spec.arm in R2M_ARMS:  # the fusion's movement, and the fusion's and head's together
        scalars = {"r2m/weight_change": head_moves, **({"r2m/fusion_weight_change": moves} if record_fusion else {})}
    return RunRecord(spec.name, spec.phase, spec.world, spec.algorithm, spec.arm, spec.seed, spec.regime, "abc",
                     "kl_reached", (0, 10, 20, 30), kls, golds, (0.0, 0.1, 0.2, 0.3), scalars, 12.0)


def _records(**kw):
    return [r for r in (_record(s, **kw) for s in phase_runs(PAPER, Phase.TEST, PLAN)) if r is not None]


def test_verdicts_holm_over_exactly_the_primaries() -> None:
    v = verdict_records(_records(), PAPER, PLAN)
    primary = [x for x in v if x.primary]
    assert len(primary) == 10 and all(x.p_holm is not None for x in primary)
    assert all(x.p_holm is None for x in v if not x.primary)
    by = {(x.world, x.claim, x.metric): x for x in v}
    assert by[("length", "oracle_vs_vanilla", "gold@kl=0.1")].verdict.value == "better"
    assert by[("length", "r2m_vs_vanilla", "gold@kl=0.1")].verdict.value == "equivalent"  # lift 0, small noise
    assert by[("length", "ser_vs_loop0", "ser/test_acc - ser/loop0_test_acc")].verdict.value == "better"
    # Exploratory: the other budgets and the ladder; λ = 0.1's lift of 0.004 is inside the margin.
    assert not by[("length", "oracle_vs_vanilla", "gold@kl=0.05")].primary
    assert by[("noisy", "ladder_0.1_vs_vanilla", "gold@kl=0.1")].verdict.value == "equivalent"
    assert by[("length", "r2m_vs_vanilla_kl_target", "final_gold@kl_target=0.1")].algorithm == "RLOO"
    # Holm: the smallest primary p times 10 (the family's size), capped at 1 and monotone.
    tests = [t for t in claim_tests(_records(), PAPER, PLAN) if t.primary]
    ps = sorted(t.interval.p_value for t in tests)
    assert min(x.p_holm for x in primary) == pytest.approx(min(1.0, 10 * ps[0]))


def test_inactive_and_not_decidable() -> None:
    v = verdict_records(_records(moves=4e-4, ser_loops=0), PAPER, PLAN)
    r2m = [x for x in v if x.claim == "r2m_vs_vanilla" and x.primary]
    assert r2m and all(x.verdict.value == "inactive" and "0.0004" in x.reason for x in r2m)
    ser = [x for x in v if x.claim == "ser_vs_loop0"]
    assert all(x.verdict.value == "inactive" and "no self-labelling loop" in x.reason for x in ser)
    few = verdict_records(_records(n_seeds=4), PAPER, PLAN)
    assert all(x.verdict.value == "not decidable" and x.p_holm is None for x in few if x.primary)


def _missing_budget(records, arm: Arm, seeds, budget: float = 0.2):
    """``arm``'s runs at ``seeds`` stop below ``budget`` (their trajectory ends at KL 0.15)."""
    out = []
    for r in records:
        if r.arm is arm and r.seed in seeds and r.regime is KLRegime.FIXED:
            r = r._replace(step=r.step[:3], kl=r.kl[:3], gold=r.gold[:3], proxy=r.proxy[:3], stop_reason="step_cap")
        out.append(r)
    return out


def test_seeds_missing_a_budget_in_one_arm_are_not_decidable() -> None:
    """A seed dropped because one arm missed the budget is a non-random drop: not decidable, naming the arm and
    seeds; dropped seeds are recorded in every record."""
    recs = _missing_budget(_records(), Arm.ORACLE, {3, 7})
    by = {(x.world, x.claim, x.metric): x for x in verdict_records(recs, PAPER, PLAN)}
    v = by[("length", "oracle_vs_vanilla", "gold@kl=0.2")]
    assert v.verdict.value == "not decidable" and v.dropped == (3, 7) and len(v.seeds) == 8
    assert "oracle" in v.reason and "3, 7" in v.reason and "gold@kl=0.2" in v.reason
    # The budgets the arm did reach decide as before, with nothing dropped.
    primary = by[("length", "oracle_vs_vanilla", "gold@kl=0.1")]
    assert primary.verdict.value == "better" and primary.dropped == ()
    # Both arms missing a seed's budget drops it without bias: still decided, the seed listed as dropped.
    both = _missing_budget(_missing_budget(_records(), Arm.ORACLE, {3}), Arm.VANILLA, {3})
    v = {(x.world, x.claim, x.metric): x for x in verdict_records(both, PAPER, PLAN)}[
        ("length", "oracle_vs_vanilla", "gold@kl=0.2")]
    assert v.verdict.value == "better" and v.dropped == (3,)


def test_dropped_seeds_in_the_report(tmp_path) -> None:
    recs = _missing_budget(_records(), Arm.ORACLE, {3, 7})
    write_trajectories(tmp_path / "trajectories.json", "paper", "r2m bench --preset paper", PLAN, recs)
    report_from(tmp_path / "trajectories.json", str(tmp_path / "BENCHMARKS.md"), "r2m bench report")
    doc = json.loads((tmp_path / "verdicts.json").read_text())
    row = next(v for v in doc["verdicts"] if (v["world"], v["claim"], v["metric"]) ==
               ("length", "oracle_vs_vanilla", "gold@kl=0.2"))
    assert row["dropped"] == [3, 7] and row["verdict"] == "not decidable"
    table = verdict_table(verdict_records(recs, PAPER, PLAN), None)
    header = table.splitlines()[0]
    assert "| dropped |" in header
    line = next(x for x in table.splitlines() if "`oracle_vs_vanilla` | length | RLOO | gold@kl=0.2 " in x)
    assert "| 3, 7 |" in line
    assert "| dropped |" in (tmp_path / "BENCHMARKS.md").read_text()


def test_inactive_reads_the_fusions_movement() -> None:
    """The head moving does not make R2M active: the rule reads r2m/fusion_weight_change; without it recorded the
    claim is not decidable, never silently active."""
    v = verdict_records(_records(moves=4e-4, head_moves=0.05), PAPER, PLAN)
    r2m = [x for x in v if x.claim in ("r2m_vs_vanilla", "oracle_vs_vanilla") and x.primary]
    assert r2m and all(x.verdict.value == "inactive" and "0.0004" in x.reason for x in r2m)
    v = verdict_records(_records(record_fusion=False), PAPER, PLAN)
    r2m = [x for x in v if x.claim in ("r2m_vs_vanilla", "oracle_vs_vanilla", "random_vs_vanilla")]
    assert r2m and all(x.verdict.value == "not decidable" and "fusion movement not recorded" in x.reason
                       and x.p_holm is None for x in r2m)
    # w/o Train freezes the fusion by design: its claim is read on the numbers.
    wo = [x for x in v if x.claim == "wo_train_vs_vanilla"]
    assert wo and all(x.verdict.value != "not decidable" for x in wo)


def test_kl_targeted_claims_have_their_own_ids() -> None:
    """The KL-targeted claims are exploratory rows of their own, not hidden behind the primaries' ids."""
    v = verdict_records(_records(), PAPER, PLAN)
    targeted = [x for x in v if x.metric.startswith("final_gold@kl_target")]
    assert {x.claim for x in targeted} == {"r2m_vs_vanilla_kl_target", "oracle_vs_vanilla_kl_target"}
    assert len({c.claim for c in CLAIMS}) == len(CLAIMS)  # one id, one claim
    table = verdict_table(v, False)
    assert "`r2m_vs_vanilla_kl_target` | length | RLOO | final_gold@kl_target=0.1" in table
    assert "`oracle_vs_vanilla_kl_target` | length | RLOO | final_gold@kl_target=0.1" in table


def test_calibration_json() -> None:
    recs = _records()
    v = verdict_records(recs, PAPER, PLAN)
    cal = calibration(recs, v, PAPER, PLAN)
    assert set(cal) == {"worlds"} and set(cal["worlds"]) == {"length", "noisy", "blind"}
    length = cal["worlds"]["length"]
    assert set(length) == {"0.1", "0.25", "0.5", "min_detectable_effect"}
    assert length["0.25"]["verdict"] == "better"
    assert length["0.25"]["diff_mean"] == pytest.approx(0.03 + 0.01 * 0.04)  # mean noise 0.04
    assert set(length["0.5"]) == {"diff_mean", "ci95", "verdict"} and len(length["0.5"]["ci95"]) == 2
    assert 0 < length["min_detectable_effect"] < 0.03


def test_report_regenerates_from_trajectories(tmp_path, capsys) -> None:
    runs = _records()
    write_trajectories(tmp_path / "trajectories.json", "paper", "r2m bench --preset paper", PLAN, runs)
    assert read_trajectories(tmp_path / "trajectories.json").runs == runs
    out = tmp_path / "BENCHMARKS.md"
    assert report_from(tmp_path / "trajectories.json", str(out), "r2m bench report") == 0
    doc = json.loads((tmp_path / "verdicts.json").read_text())
    assert set(doc) == {"commit", "command", "method", "margin", "verdicts"}
    assert set(doc["verdicts"][0]) == {"world", "algorithm", "claim", "metric", "primary", "seeds", "dropped",
                                       "diff_mean", "ci95", "p_holm", "verdict", "reason"}
    assert json.loads((tmp_path / "calibration.json").read_text())["worlds"]["blind"]["0.25"]["verdict"] == "better"
    text = out.read_text()
    assert text.index("## Primary verdicts") < text.index("## Calibration ladder") < text.index("## Exploratory")
    assert "has not finished" not in text  # every test run is in the document
    partial = [r for r in runs if r.arm is not Arm.GOLD]
    write_trajectories(tmp_path / "trajectories.json", "paper", "r2m bench --preset paper", PLAN, partial)
    report_from(tmp_path / "trajectories.json", str(out), "r2m bench report")
    assert f"has not finished ({len(partial) - 0} of {len(runs)} test runs recorded)" in out.read_text()


def test_cell_reruns_the_designs_run(tmp_path) -> None:
    write_trajectories(tmp_path / "t.json", "paper", "x", PLAN, [])
    spec = cell_spec("paper", "noisy", "ensemble_mean", 7, str(tmp_path / "t.json"))
    (same,) = [s for s in phase_runs(PAPER, Phase.TEST, PLAN) if s.name == spec.name]
    assert same.overrides == spec.overrides and "reward.ensemble_seeds=[7,1007,2007,3007]" in spec.overrides
    kl = cell_spec("paper", "length", "r2m-kl", 2, str(tmp_path / "t.json"))
    assert kl.regime is KLRegime.TARGETED and "reward.r2m.lr=0.0001" in kl.overrides
    with pytest.raises(ValueError, match="no run of world"):
        cell_spec("paper", "ser_headroom", "r2m", 0, str(tmp_path / "t.json"))
    with pytest.raises(ValueError, match="no plan"):
        cell_spec("paper", "length", "r2m", 0, str(tmp_path / "missing.json"))
