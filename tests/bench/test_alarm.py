"""The alarm's validation section and alarm.json (r2m_bench.alarm) on constructed run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2m_bench import alarm as ba
from r2m_bench.design import PAPER, Arm, Phase, Plan, SweepPoint, phase_runs
from r2m_bench.runner import RESULT_FILE

GOLD = [0.5, 0.6, 0.7, 0.8, 0.6, 0.5]
TOKEN_JS = [0.0, 0.0004, 0.0015, 0.003, 0.007, 0.02]
"""Tuning runs: token_js alone is best at 0.005 (first reached at evaluation 4, one after the gold peak)."""
HELD_JS = [0.0, 0.001, 0.003, 0.007, 0.015, 0.03]
"""Held-out runs: here 0.01 would be best (0.005 fires at the peak, keeps the evaluation before it: 2/3)."""


def _write_run(root: Path, name: str, gold=GOLD, token_js=TOKEN_JS, monitor=True) -> None:
    d = root / name
    d.mkdir(parents=True)
    lines = []
    for i, g in enumerate(gold):
        lines.append({"step": 10 * i, "loss/total": 0.1})  # a training row: not an evaluation
        row = {"step": 10 * i, "eval/length": 12.0, "eval/gold": g, "eval/kl": 0.01 * i, "time/monitor": 0.25}
        if monitor:
            row["monitor/token_js"] = token_js[i]
        lines.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (d / RESULT_FILE).write_text("{}")


PLAN = Plan({w: (0.01, 0.02, 0.04) for w in ("length", "noisy", "blind")},
            {w: 50 for w in ("length", "noisy", "blind")},
            SweepPoint(1e-4, "random", 0.6))



def test_split_exclusions_and_alarm_json(tmp_path):
    specs = [s for s in phase_runs(PAPER, Phase.TEST, PLAN) if s.arm is not Arm.SER]
    by = {(s.world, s.arm, s.seed, s.regime.value): s.name for s in specs}
    tune = [phase_runs(PAPER, Phase.PILOT)[0].name, by[("length", Arm.VANILLA, 0, "fixed")]]
    held = [by[("noisy", Arm.VANILLA, 0, "fixed")], by[("blind", Arm.R2M, 1, "fixed")]]
    for name in tune:
        _write_run(tmp_path, name)
    for name in held:
        _write_run(tmp_path, name, token_js=HELD_JS)
    _write_run(tmp_path, by[("length", Arm.GOLD, 0, "fixed")])  # the ceiling: left out, counted
    _write_run(tmp_path, by[("noisy", Arm.R2M, 0, "fixed")], monitor=False)
    flat = by[("blind", Arm.VANILLA, 1, "fixed")]
    # No gain: counted, not in the recovered shares.
    _write_run(tmp_path, flat, gold=[0.5, 0.4, 0.4, 0.3, 0.3, 0.2], token_js=HELD_JS)
    runs = ba.load_runs(PAPER, tmp_path, PLAN)
    assert [r.name for r in runs.tune] == tune
    assert sorted(r.name for r in runs.held_out) == sorted([*held, flat])
    assert runs.excluded["gold arm (the proxy is gold)"] == [n for (w, a, s, g), n in by.items() if a is Arm.GOLD]
    assert runs.excluded["no monitor/* signals"] == [by[("noisy", Arm.R2M, 0, "fixed")]]
    total = len(phase_runs(PAPER, Phase.PILOT)) + len(phase_runs(PAPER, Phase.TUNING, PLAN)) + len(specs)
    assert sum(len(v) for v in runs.excluded.values()) + len(runs.tune) + len(runs.held_out) == total
    assert len(runs.monitor_s) == 6 * 5 and set(runs.monitor_s) == {0.25}

    art = tmp_path / "art"
    text = ba.write_alarm_validation(PAPER, tmp_path, PLAN, art, "art")
    doc = json.loads((art / ba.ALARM_FILE).read_text())
    assert doc["split"]["tune_runs"] == 2 and doc["combined"]["tuning_runs_in_sample"]["runs"] == 2
    assert doc["combined"]["tuning_runs_in_sample"]["mean_recovered"] == 1.0  # the tuned rule keeps their peaks
    # token_js alone is tuned on the tuning runs only (0.005; the held-out runs would have chosen 0.01), so held
    # out it fires at the peak and keeps the evaluation before it: 2/3 of the gain in both runs with a gain; the
    # no-gain run is counted apart.
    tok = doc["per_signal"]["monitor/token_js"]
    assert tok["thresholds"]["token_js"] == 0.005 and tok["thresholds"]["patience"] == 1
    assert tok["no_gain"] == 1 and tok["with_gain"] == 2 and tok["recovered_90pct_share"] == 0.0
    assert tok["mean_recovered"] == pytest.approx(2 / 3) and tok["hits"] == 2 and tok["late"] == 1
    assert set(tok["per_world"]) == {"noisy", "blind"} and tok["per_world"]["noisy"]["runs"] == 1
    assert doc["time_monitor_median_s"] == 0.25 and doc["held_out_runs"] == 3
    # Fixed KL, leave one world out: every run shares one KL path and peaks at evaluation 3, so each held-out
    # world's budget (tuned on the others) keeps the peak: 1.0, which the alarm does not beat.
    assert set(doc["baselines"]["fixed_kl_lowo"]["budgets"]) == {"noisy", "blind"}
    assert doc["baselines"]["fixed_kl_lowo"]["mean_recovered"] == 1.0 and doc["beats_fixed_kl"] is False
    assert doc["target_met"] is False and doc["baselines"]["fixed_step"]["step"] == 30
    # The headline alarm is tuned per held-out world on the other worlds' runs, as the fixed-KL stop is.
    assert doc["headline_rule"] == "combined_lowo" and set(doc["combined_lowo"]["thresholds"]) == {"noisy", "blind"}
    assert doc["recovered_90pct_share"] == doc["combined_lowo"]["held_out"]["recovered_90pct_share"]
    assert doc["combined_lowo"]["held_out"]["runs"] == 3 and "tuned_on_all_runs" in doc
    assert doc["excluded"] == {k: len(v) for k, v in runs.excluded.items()}
    assert "## Over-optimisation alarm: validation on held-out runs" in text and "NOT met" in text
    assert "token_js alone" in text and "fixed KL (leave one world out)" in text
    assert "- token_js alone, `noisy`: 0% recover >= 90% (mean 0.67); of its 1 misses, 1 kept before the peak" in text
    assert "does not beat the leave-one-world-out fixed-KL stop's (1.00)" in text
    assert set(doc["paired_vs_fixed_kl"]) == {"alarm, combined (leave one world out)", "fixed step",
                                             "alarm, combined without kl (leave one world out)",
                                             "alarm, combined (tuned on `length`)"}
    assert "### Against the fixed-KL stop, paired by run" in text


def test_no_finished_run_is_reported_not_crashed(tmp_path):
    text = ba.write_alarm_validation(PAPER, tmp_path, PLAN, tmp_path, ".")
    doc = json.loads((tmp_path / ba.ALARM_FILE).read_text())
    assert doc["held_out_runs"] == 0 and doc["recovered_90pct_share"] is None and doc["beats_fixed_kl"] is False
    assert doc["baselines"]["fixed_step"]["step"] is None
    # No pair to compare: nulls in the JSON (written with allow_nan=False), never NaN.
    headline = doc["paired_vs_fixed_kl"]["alarm, combined (leave one world out)"]["mean_recovered"]
    assert headline == {"diff_mean": None, "ci95": [None, None], "verdict": "not decidable", "pairs": 0, "clusters": 0,
                        "dropped": 0}
    assert "no held-out run has finished" in text


def _outcomes(recs, worlds=("noisy",) * 4, seeds=(0, 1, 2, 3)):
    from r2m_bench import alarm_eval as ae
    runs = [ae.RunSeries(f"run{i}", w, "RLOO", "vanilla", s, False, ({"step": 0},))
            for i, (w, s) in enumerate(zip(worlds, seeds))]
    return runs, [ae.Outcome(r, 10, 10, 20, ae.Timing.EARLY, rec) for r, rec in zip(runs, recs)]


def test_paired_comparison_by_hand_and_the_beats_verdict():
    from types import SimpleNamespace

    from r2m_bench.stats import Verdict
    # Runs 0 and 1 share the cluster (noisy, 0); two worlds share seeds 0 and 1: pairing is by run, the unit is the
    # (world, seed) cluster. Run 7 has no gain under the fixed-KL stop: no pair.
    worlds = ("noisy", "noisy", "noisy", "blind", "blind", "blind", "length", "blind")
    seeds = (0, 0, 1, 0, 1, 2, 0, 3)
    d = (0.4, 0.2, 0.1, 0.2, 0.3, 0.1, 0.3, 0.2)
    held, base = _outcomes([0.5] * 7 + [None], worlds, seeds)
    _, better = _outcomes([0.5 + x for x in d], worlds, seeds)
    better = better[::-1]
    # Cluster means 0.3, 0.1, 0.2, 0.3, 0.1, 0.3: mean 0.21667 (the run-level mean would be 1.6 / 7 = 0.2286);
    # s = 0.09832, se = 0.04014, t(0.975, 5) = 2.5706: [0.1135, 0.3198].
    p = ba.paired(ba.Rule("a", "", better), ba.Rule("kl", "", base), held)
    rec = p["mean_recovered"]
    assert rec.diff_mean == pytest.approx(1.3 / 6) and rec.clusters == 6
    assert rec.seeds == (0, 1, 2, 3, 4, 5, 6) and rec.dropped == (7,)
    assert rec.ci95 == pytest.approx((0.1135, 0.3198), abs=2e-4) and rec.verdict is Verdict.BETTER
    # >= 90%: only run 0 (0.9) against none: cluster (noisy, 0) moves by 1/2, the others by 0.
    assert p["recovered_90pct_share"].diff_mean == pytest.approx(0.5 / 6)
    # Four clusters are not enough for a verdict (stats.MIN_PAIRS = 5); the mean is still reported.
    few = ba.paired(ba.Rule("a", "", better), ba.Rule("kl", "", base[:5]), held)["mean_recovered"]
    assert few.clusters == 4 and few.verdict is Verdict.NOT_DECIDABLE and few.diff_mean == pytest.approx(0.225)

    def validation(rule):
        r, kl = ba.Rule("a", "", rule), ba.Rule("kl", "", base)
        return SimpleNamespace(lowo_rule=r, kl_rule=kl, runs=SimpleNamespace(held_out=held),
                               paired=ba.comparisons([r], kl, held))

    assert ba.headline(validation(better))["beats_fixed_kl"] is True
    assert ba.headline(validation(better))["recovered_90pct_share"] == pytest.approx(1 / 8)  # run 0 alone
    # A higher mean inside the noise does not beat: cluster means 0.1, -0.2, 0.1, -0.1, 0.2, 0.0.
    _, mixed = _outcomes([0.5 + x for x in (0.3, -0.1, -0.2, 0.1, -0.1, 0.2, 0.0, 0.0)], worlds, seeds)
    m = ba.paired(ba.Rule("a", "", mixed), ba.Rule("kl", "", base), held)["mean_recovered"]
    assert m.diff_mean == pytest.approx(0.1 / 6) and m.verdict is Verdict.INCONCLUSIVE
    assert ba.headline(validation(mixed))["beats_fixed_kl"] is False
