"""r2m.recipes.alarm: the monitor in every RL run, the alarm, rl.stop_on_alarm and checkpoints/best-before-alarm."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from r2m.config.parsing import load_config
from r2m.config.monitor import ALARM_RULE, THRESHOLD_OF, THRESHOLDS, MonitorConfig
from r2m.core.monitor import SIGNAL_FIELDS, Alarm, Reason, Rule, Signal, first_alarm
from r2m.errors import ConfigError
from r2m.recipes.alarm import BEST, describe

# Only hidden_drift counts, with a threshold any trained policy passes; evaluation 1 is warm-up, so the
# alarm fires at evaluation 3 (steps 2 and 3 trip, patience 2) and keeps evaluation 1's policy (step 1).
FORCED = ["rl.monitor.check_disagreement_rise=null", "rl.monitor.proxy_gain_per_kl_ratio=null",
          "rl.monitor.length_rel_change=null", "rl.monitor.token_js=null", "rl.monitor.hidden_separation_rise=null",
          "rl.monitor.fused_disagreement_rise=null", "rl.monitor.hidden_drift=1e-9", "rl.monitor.min_signals=1",
          "rl.monitor.patience=2", "rl.monitor.warmup=2", "rl.lr=1e-3", "rl.steps=5", "eval.samples_per_prompt=2"]


def test_monitor_config_is_the_alarm_config() -> None:
    """rl.monitor is the alarm's one config type: a threshold field per signal, the rule's fields, and the
    monitor's own switches; the thresholds are read by signal."""
    names = {f.name for f in dataclasses.fields(MonitorConfig)}
    assert set(THRESHOLDS + ALARM_RULE) | {"enabled", "check_rm", "world_check_rm"} == names
    assert set(THRESHOLD_OF) == {s.value for s in Signal} and dict(SIGNAL_FIELDS) == {s: THRESHOLD_OF[s.value]
                                                                                      for s in Signal}
    cfg = MonitorConfig(token_js=None, kl=0.5)
    assert cfg.threshold(Signal.TOKEN_JS) is None and cfg.threshold(Signal.KL) == 0.5
    assert cfg.threshold(Signal.HIDDEN_DRIFT) == MonitorConfig().hidden_drift


@pytest.mark.parametrize("override, match", [("rl.monitor.token_js=-0.1", "rl.monitor.token_js"),
                                             ("rl.monitor.proxy_gain_per_kl_ratio=1.5",
                                              "rl.monitor.proxy_gain_per_kl_ratio"),
                                             ("rl.monitor.patience=0", "rl.monitor.patience"),
                                             ("rl.monitor.warmup=-1", "rl.monitor.warmup")])
def test_bad_thresholds_are_refused_by_name(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_describe_names_steps_and_reasons() -> None:
    alarm = Alarm(3, 2, (Reason(Signal.TOKEN_JS, 0.2, None, 0.1, Rule.ABOVE),))
    text = describe(alarm, [0, 10, 20, 30])
    assert "alarm at step 30" in text and "onset step 20" in text and "checkpoint before: step 10" in text
    assert "monitor/token_js=0.2" in text
    assert describe(Alarm(None, None, ()), [0]) == "no alarm"


def _policy_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _core(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(("monitor/", "time/"))} for r in rows]


@pytest.fixture(scope="module")
def unarmed(tiny, world_artifacts):
    """The forced-alarm run without stop_on_alarm, with a checkpoint at every step."""
    from r2m.recipes.rl.run import run_rl

    return run_rl(load_config(None, [*tiny, *FORCED, "rl.save_every=1", "run.keep_checkpoints=0",
                                     "run.name=alarm-unarmed"]))


def test_the_monitor_runs_in_every_rl_run_and_the_alarm_is_logged(unarmed) -> None:
    evals = [r for r in unarmed.history if "eval/length" in r]
    assert [int(r["step"]) for r in evals] == [0, 1, 2, 3, 4, 5]
    for key in ("monitor/check_disagreement", "monitor/length_rel_change", "monitor/token_js",
                "monitor/hidden_drift", "monitor/hidden_separation", "time/monitor"):
        assert all(key in r for r in evals), key  # the world's check RM was built: its signal is there
    assert "monitor/proxy_gain_per_kl" not in evals[0]  # no evaluation before the first
    assert [int(r["step"]) for r in evals if r.get("monitor/alarm")] == [3]
    assert unarmed.alarm_step == 3 and unarmed.best_before_alarm is None
    assert int(unarmed.history[-1]["step"]) == 5  # not armed: the run goes on
    ckpts = unarmed.run_dir / "checkpoints"
    assert not (ckpts / BEST).exists() and not list(ckpts.glob("eval-*"))  # unarmed: no snapshot written


def test_the_monitor_leaves_the_trajectory_alone(tiny, unarmed) -> None:
    from r2m.recipes.rl.run import run_rl

    off = run_rl(load_config(None, [*tiny, *FORCED, "rl.monitor.enabled=false", "run.name=alarm-off"]))
    assert not any(k.startswith("monitor/") for r in off.history for k in r)
    assert _core(off.history) == _core(unarmed.history)


@pytest.fixture(scope="module")
def armed(tiny, world_artifacts):
    """The forced-alarm run with stop_on_alarm."""
    from r2m.recipes.rl.run import run_rl

    return run_rl(load_config(None, [*tiny, *FORCED, "rl.stop_on_alarm=true", "run.name=alarm-armed"]))


def test_stop_on_alarm_stops_and_keeps_the_checkpoint_before_the_onset(armed, unarmed) -> None:
    res = armed
    assert res.alarm_step == 3 and int(res.history[-1]["step"]) == 3  # stopped at the alarm's evaluation
    ckpts = res.run_dir / "checkpoints"
    assert res.best_before_alarm == ckpts / BEST
    assert not list(ckpts.glob("eval-*"))  # the other snapshots are gone
    assert (ckpts / "step-000003").is_dir() and (ckpts / "final").is_dir()  # stopped with a checkpoint
    # The kept policy is step 1's (evaluation onset - 1 = 1): the unarmed run's step-1 checkpoint.
    kept = _policy_weights(ckpts / BEST)
    want = _policy_weights(unarmed.run_dir / "checkpoints" / "step-000001" / "policy")
    assert kept.keys() == want.keys() and all(torch.equal(kept[k], want[k]) for k in kept)
    later = _policy_weights(unarmed.run_dir / "checkpoints" / "step-000002" / "policy")
    assert any(not torch.equal(kept[k], later[k]) for k in kept)
    assert _core(res.history) == _core(unarmed.history)[:4]  # snapshots do not move the trajectory


def test_a_run_stopped_by_its_alarm_resumes_unarmed(tiny, armed, unarmed) -> None:
    """A false alarm: resume with rl.stop_on_alarm=false (a resume-free field) and train on to rl.steps."""
    from r2m.recipes.rl.run import run_rl

    armed = [*tiny, *FORCED, "run.name=alarm-armed"]
    res = run_rl(load_config(None, [*armed, "rl.stop_on_alarm=false", "run.resume=auto"]))
    assert int(res.history[-1]["step"]) == 5 and res.alarm_step == 3
    assert res.best_before_alarm == res.run_dir / "checkpoints" / BEST  # still named after the resume
    assert _core(res.history) == _core(unarmed.history)


def test_first_alarm_on_the_logged_rows_matches_the_run(unarmed) -> None:
    evals = [r for r in unarmed.history if "eval/length" in r]
    cfg = load_config(unarmed.run_dir / "config.yaml")
    alarm = first_alarm(evals, cfg.rl.monitor)
    assert alarm.index == 3 and alarm.onset == 2


def test_world_models_builds_the_check_rm(tiny, world_artifacts, capsys) -> None:
    """`r2m world --models` builds the monitor's check RM too (a multi-process launch cannot build it)."""
    import json
    import re

    from r2m.cli import main
    from r2m.recipes.pipeline import world_check_rm_dir

    assert main(["world", "--models", *tiny]) == 0
    built = json.loads(re.findall(r"\{[^{}]*\"policy\"[^{}]*\}", capsys.readouterr().out)[-1])
    assert Path(built["check_rm"]) == world_check_rm_dir(load_config(None, tiny)) and Path(built["check_rm"]).is_dir()


def test_several_processes_skip_an_unbuilt_check_rm(tiny, tmp_path, monkeypatch, caplog) -> None:
    from r2m.recipes.alarm import check_rm_path

    cfg = load_config(None, [*tiny, f"run.root={tmp_path}"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with caplog.at_level("WARNING", logger="r2m"):
        assert check_rm_path(cfg, world=True) is None
    assert "r2m world --models" in caplog.text and not (tmp_path / "world").exists()
    assert check_rm_path(load_config(None, [*tiny, "rl.monitor.check_rm=/some/rm"]), world=True) == "/some/rm"
    assert check_rm_path(load_config(None, [*tiny, "reward.source=gold"]), world=True) is None


def test_stop_on_alarm_needs_the_monitor() -> None:
    with pytest.raises(ConfigError, match="rl.stop_on_alarm"):
        load_config(None, ["rl.stop_on_alarm=true", "rl.monitor.enabled=false"])


def test_armed_on_resume_without_the_snapshot_it_needs(tiny, world_artifacts, caplog) -> None:
    """Unarmed up to step 1, resumed armed: the alarm at step 3 needs step 1's policy, never saved."""
    from r2m.recipes.rl.run import run_rl

    base = [*tiny, *FORCED, "rl.save_every=1", "run.name=alarm-late"]
    run_rl(load_config(None, [*base, "rl.steps=2"]))  # a training checkpoint at step 1 only
    with caplog.at_level("WARNING", logger="r2m"):
        res = run_rl(load_config(None, [*base, "rl.stop_on_alarm=true", "run.resume=auto"]))
    assert res.alarm_step == 3 and int(res.history[-1]["step"]) == 3
    assert res.best_before_alarm is None and "was not saved" in caplog.text
    assert not list((res.run_dir / "checkpoints").glob("eval-*"))
