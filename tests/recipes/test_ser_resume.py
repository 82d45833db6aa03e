"""SER's loop state (r2m/recipes/ser_resume.py): typed stop / Full / PPO fields, ser_state.json's layout and its
format version."""

from __future__ import annotations

import json
import math

import pytest

from r2m.errors import FormatVersionError
from r2m.recipes.ser_resume import FullBaseline, LoopState, LoopStop, PPOSummary, StopEvidence, StopReason
from r2m.reports.ser_report import STATE_FILE

# A state after a stop by decision, with the Full baseline and no PPO (values of a tiny SER run, rounded) ...
STOPPED = {"format_version": 1, "key": "475ae16b82", "loop": 0, "rm_dir": "loop-0/checkpoints/final",
           "seed_dir": "loop-0/checkpoints/final", "history": [{"loop": 0, "status": "seed", "ser/val_acc": 0.75}],
           "stop": {"reason": "stop_status", "loop": 1, "decision": "1/8 confident < min_status1 100000",
                    "ser/val_confident": 1, "ser/val_delta_p": 0.1786, "ser/val_n": 8, "ser/status1_gain": math.nan,
                    "ser/cal_centre": -0.0912, "ser/cal_scale": 0.1487},
           "full": {"rm_dir": "full/checkpoints/final", "ser/selected": 260, "ser/val_acc": 1.0,
                    "ser/val_gold_acc": 0.875, "ser/test_acc": 0.77, "ser/test_gold_acc": 0.7033, "ser/train_steps": 9,
                    "ser/wall_s": 0.88, "ser/test_acc_equal_len": 0.6, "ser/test_acc_unequal_len": math.nan},
           "ppo": None}
# ... and max_loops with a PPO stage.
WITH_PPO = {**STOPPED, "stop": {"reason": "max_loops", "loop": 2},
            "ppo": {"run_dir": "/runs/ser-e2e-ppo", "rm_dir": "loop-2/checkpoints/final", "steps": 2, "sft_gold": -0.1448,
                    "eval/gold": -0.1448, "eval/win_rate_vs_sft": 0.5, "eval/lc_win_rate_vs_sft": 0.5,
                    "eval/proxy": 0.0388, "eval/kl": 0.00046, "eval/length": 5.25, "eval/exact_match": 0.0,
                    "sft_length": 5.25, "wall_s": 1.03}}


def test_state_files_read_typed_and_write_back_byte_identical(tmp_path) -> None:
    for written in (STOPPED, WITH_PPO):
        text = json.dumps(written, indent=1) + "\n"
        (tmp_path / STATE_FILE).write_text(text)
        state = LoopState.load(tmp_path)
        assert isinstance(state.stop, LoopStop) and isinstance(state.stop.reason, StopReason)
        assert isinstance(state.full, FullBaseline) and state.full.rm_dir == "full/checkpoints/final"
        state.save(tmp_path)
        assert (tmp_path / STATE_FILE).read_text() == text  # the same keys, in the same order, with the same values
    assert state.ppo == PPOSummary("/runs/ser-e2e-ppo", "loop-2/checkpoints/final", 2, -0.1448,
                                   {k: v for k, v in WITH_PPO["ppo"].items() if k.startswith("eval/")}, 5.25, 1.03)
    assert state.stop == LoopStop(StopReason.MAX_LOOPS, 2) and state.stop.evidence is None


def test_stop_after_a_decision_carries_its_evidence() -> None:
    stop = LoopStop.from_json(STOPPED["stop"])
    assert stop.reason is StopReason.STATUS and stop.loop == 1 and stop.decision.startswith("1/8")
    ev = stop.evidence
    assert isinstance(ev, StopEvidence) and (ev.val_confident, ev.val_n, ev.val_delta_p) == (1, 8, 0.1786)
    assert math.isnan(ev.status1_gain)
    assert stop.to_json().keys() == STOPPED["stop"].keys()  # each value once: ser/<field>


def test_the_full_baseline_has_every_field() -> None:
    full = FullBaseline.from_json(STOPPED["full"])
    assert full.test_acc == 0.77 and full.test_acc_equal_len == 0.6 and math.isnan(full.test_acc_unequal_len)
    assert full.to_json().keys() == STOPPED["full"].keys()
    with pytest.raises(KeyError, match="ser/test_acc_equal_len"):
        FullBaseline.from_json({k: v for k, v in STOPPED["full"].items() if k != "ser/test_acc_equal_len"})


@pytest.mark.parametrize("version", [None, 2])
def test_a_state_of_another_format_version_is_refused_by_name(tmp_path, version) -> None:
    """An older r2m's ser_state.json (no format_version; its key hashed the loop's fields in another layout, its
    Full baseline may lack fields) or another version's is refused, naming the file, both versions and what to do;
    a resume never reads it another way."""
    old = {k: v for k, v in STOPPED.items() if k != "format_version"}
    if version is not None:
        old = {"format_version": version, **old}
    (tmp_path / STATE_FILE).write_text(json.dumps(old, indent=1) + "\n")
    has = "no format version" if version is None else f"format version {version}"
    with pytest.raises(FormatVersionError, match=rf"ser_state\.json: this SER loop state has {has}.*; this r2m reads "
                                                 r"version 1: .*start a new run"):
        LoopState.load(tmp_path)
