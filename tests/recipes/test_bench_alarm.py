"""The alarm's validation section and alarm.json (r2m.recipes.bench_alarm) on constructed run directories."""

from __future__ import annotations

import json
from pathlib import Path

from r2m.recipes import bench_alarm as ba
from r2m.recipes.bench_design import SMOKE, Arm, design_runs, sweep_runs
from r2m.recipes.bench_design_run import RESULT_FILE

GOLD = [0.5, 0.6, 0.7, 0.8, 0.6, 0.5]
TOKEN_JS = [0.0, 0.0004, 0.0015, 0.003, 0.007, 0.02]


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


def test_split_exclusions_and_alarm_json(tmp_path):
    specs = design_runs(SMOKE)
    by = {(s.world, s.arm, s.seed, s.regime.value): s.name for s in specs}
    tune = [sweep_runs(SMOKE)[0].name, by[("length", Arm.VANILLA, 0, "fixed")]]
    held = [by[("noisy", Arm.VANILLA, 0, "fixed")], by[("blind", Arm.R2M, 1, "fixed")]]
    for name in tune + held:
        _write_run(tmp_path, name)
    _write_run(tmp_path, by[("length", Arm.GOLD, 0, "fixed")])  # the ceiling: left out, counted
    _write_run(tmp_path, by[("noisy", Arm.R2M, 0, "fixed")], monitor=False)
    flat = by[("blind", Arm.VANILLA, 1, "fixed")]
    _write_run(tmp_path, flat, gold=[0.5, 0.4, 0.4, 0.3, 0.3, 0.2])  # no gain: counted, not in the shares
    runs = ba.load_runs(SMOKE, tmp_path, None)
    assert [r.name for r in runs.tune] == tune
    assert sorted(r.name for r in runs.held_out) == sorted([*held, flat])
    assert runs.excluded["gold arm (the proxy is gold)"] == [n for (w, a, s, g), n in by.items() if a is Arm.GOLD]
    assert runs.excluded["no monitor/* signals"] == [by[("noisy", Arm.R2M, 0, "fixed")]]
    total = len(sweep_runs(SMOKE)) + len(specs)
    assert sum(len(v) for v in runs.excluded.values()) + len(runs.tune) + len(runs.held_out) == total
    assert len(runs.monitor_s) == 6 * 5 and set(runs.monitor_s) == {0.25}

    art = tmp_path / "art"
    text = ba.write_alarm_validation(SMOKE, tmp_path, None, art, "art")
    doc = json.loads((art / ba.ALARM_FILE).read_text())
    assert doc["held_out_runs"] == 3 and doc["split"]["tune_runs"] == 2
    assert doc["per_signal"]["monitor/token_js"]["thresholds"]["token_js"] == 0.005  # tuned on the tuning runs
    # Held out, token_js alone keeps the peak of both runs with a gain; the no-gain run is counted apart.
    tok = doc["per_signal"]["monitor/token_js"]
    assert tok["no_gain"] == 1 and tok["with_gain"] == 2 and tok["recovered_90pct_share"] == 1.0
    assert set(tok["per_world"]) == {"noisy", "blind"}
    assert doc["recovered_90pct_share"] == 1.0 and doc["time_monitor_median_s"] == 0.25
    # Fixed KL, leave one world out: the tuning runs are all `length`, so every held-out world gets a budget
    # from the others; all runs share one KL path here, so it stops at the peak too and the alarm cannot beat it.
    assert set(doc["baselines"]["fixed_kl_lowo"]["budgets"]) == {"noisy", "blind"}
    assert doc["baselines"]["fixed_kl_lowo"]["mean_recovered"] == 1.0 and doc["beats_fixed_kl"] is False
    assert doc["baselines"]["fixed_step"]["step"] == 30
    assert doc["excluded"] == {k: len(v) for k, v in runs.excluded.items()}
    assert "## Over-optimisation alarm: validation on held-out runs" in text and "NOT met" in text
    assert "token_js alone" in text and "fixed KL (leave one world out)" in text


def test_no_finished_run_is_reported_not_crashed(tmp_path):
    text = ba.write_alarm_validation(SMOKE, tmp_path, None, tmp_path, ".")
    doc = json.loads((tmp_path / ba.ALARM_FILE).read_text())
    assert doc["held_out_runs"] == 0 and doc["recovered_90pct_share"] is None and doc["beats_fixed_kl"] is False
    assert doc["baselines"]["fixed_step"]["step"] is None
    assert "no held-out run has finished" in text
