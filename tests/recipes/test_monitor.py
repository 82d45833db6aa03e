"""`r2m monitor RUN_DIR` (r2m.recipes.monitor) in-process on a tiny run: replay, overrides, plot, bad input."""

from __future__ import annotations

import json

import pytest

from r2m.cli import main
from r2m.config.parsing import load_config
from r2m.recipes.monitor import replay
from r2m.reports.monitor_plot import trip_line
from r2m.core.monitor import Signal


@pytest.fixture(scope="module")
def run_dir(tiny, world_artifacts):
    from r2m.recipes.rl.run import run_rl

    res = run_rl(load_config(None, [*tiny, "rl.steps=3", "rl.lr=1e-3", "eval.samples_per_prompt=2",
                                    "run.name=monitor-cli"]))
    return res.run_dir


# Every signal off but hidden_drift, at a level any trained policy passes.
ONLY_DRIFT = ["check_disagreement_rise=null", "proxy_gain_per_kl_ratio=null", "length_rel_change=null",
              "token_js=null", "hidden_separation_rise=null", "fused_disagreement_rise=null", "hidden_drift=1e-9"]


def test_replay_with_the_runs_thresholds_and_with_overrides(run_dir, capsys) -> None:
    # The run's own thresholds (the placeholders) on a 3-step run: the printout names every evaluation.
    assert main(["monitor", str(run_dir), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "4 evaluations" in out and "step      3" in out
    assert not (run_dir / "plots" / "monitor.png").exists()
    # Forced: min_signals 1, patience 1, warm-up 1 -> fires at evaluation 1 (step 1), keeps evaluation 0.
    argv = ["monitor", str(run_dir), *ONLY_DRIFT, "min_signals=1", "patience=1", "rl.monitor.warmup=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "alarm at step 1 (evaluation 1; onset step 1; checkpoint before: step 0)" in out
    assert "monitor/hidden_drift=" in out and "peak gold at step" in out
    assert (run_dir / "plots" / "monitor.png").stat().st_size > 0
    r = replay(run_dir, [*ONLY_DRIFT, "min_signals=1", "patience=2", "warmup=2"], plot=False)
    assert r.alarm_step == 3 and r.alarm.onset == 2
    assert r.recovered is None or r.recovered <= 1.0
    assert replay(run_dir, [*ONLY_DRIFT, "hidden_drift=null"], plot=False).alarm_step is None


def test_bad_overrides_and_run_dirs_are_refused(run_dir, tmp_path, capsys) -> None:
    assert main(["monitor", str(run_dir), "rl.steps=5"]) == 2
    assert "override 'rl.steps=5'" in capsys.readouterr().err
    assert main(["monitor", str(run_dir), "token_js=-1"]) == 2
    assert "rl.monitor.token_js" in capsys.readouterr().err
    assert main(["monitor", str(tmp_path)]) == 2
    assert "config.yaml: no such file" in capsys.readouterr().err
    # A run logged without the monitor has nothing to replay.
    (tmp_path / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stripped = [{k: v for k, v in r.items() if not k.startswith("monitor/")} for r in rows]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    assert main(["monitor", str(tmp_path)]) == 2
    assert "no evaluation row has monitor/* values" in capsys.readouterr().err


def test_trip_lines_follow_the_rules() -> None:
    assert trip_line(Signal.TOKEN_JS, [0.0, 0.3], 0.1) == [0.1]
    assert trip_line(Signal.LENGTH_REL_CHANGE, [0.0], 0.3) == [0.3, -0.3]
    assert trip_line(Signal.HIDDEN_SEPARATION, [0.7, 0.9], 0.05) == [pytest.approx(0.75)]
    assert trip_line(Signal.PROXY_GAIN_PER_KL, [2.0, 0.1], 0.25) == [0.5]
    assert trip_line(Signal.PROXY_GAIN_PER_KL, [-1.0], 0.25) == []
