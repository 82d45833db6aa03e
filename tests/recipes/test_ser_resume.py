"""SER's loop state (r2m/recipes/ser_resume.py): typed stop / Full / PPO fields, the same ser_state.json layout."""

from __future__ import annotations

import json
import math

from r2m.recipes.ser_resume import FullBaseline, LoopState, LoopStop, PPOSummary, StopEvidence, StopReason
from r2m.reports.ser_report import STATE_FILE

# Written by r2m before the fields were typed (a tiny SER run on main, values rounded): stop after a decision,
# the Full baseline, no PPO ...
STOPPED = {"key": "475ae16b82", "loop": 0, "rm_dir": "loop-0/checkpoints/final", "seed_dir": "loop-0/checkpoints/final",
           "history": [{"loop": 0, "status": "seed", "ser/val_acc": 0.75}],
           "stop": {"reason": "stop_status", "loop": 1, "decision": "1/8 confident < min_status1 100000",
                    "ser/val_confident": 1, "ser/val_delta_p": 0.1786, "ser/val_n": 8, "ser/status1_gain": math.nan,
                    "ser/cal_centre": -0.0912, "ser/cal_scale": 0.1487, "confident": 1, "delta_p": 0.1786},
           "full": {"rm_dir": "full/checkpoints/final", "ser/selected": 260, "ser/val_acc": 1.0,
                    "ser/val_gold_acc": 0.875, "ser/test_acc": 0.77, "ser/test_gold_acc": 0.7033, "ser/train_steps": 9,
                    "ser/wall_s": 0.88},
           "ppo": None}
# ... and max_loops with a PPO stage.
WITH_PPO = {**STOPPED, "stop": {"reason": "max_loops", "loop": 2},
            "ppo": {"run_dir": "/runs/ser-e2e-ppo", "rm_dir": "loop-2/checkpoints/final", "steps": 2,
                    "sft_gold": -0.1448,
                    "eval/gold": -0.1448, "eval/win_rate_vs_sft": 0.5, "eval/lc_win_rate_vs_sft": 0.5,
                    "eval/proxy": 0.0388, "eval/kl": 0.00046, "eval/length": 5.25, "eval/exact_match": 0.0,
                    "sft_length": 5.25, "wall_s": 1.03}}


def test_old_state_files_read_typed_and_write_back_byte_identical(tmp_path) -> None:
    for old in (STOPPED, WITH_PPO):
        text = json.dumps(old, indent=1) + "\n"
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


def test_a_full_baseline_written_before_the_length_split_reads_as_none() -> None:
    full = FullBaseline.from_json(STOPPED["full"])
    assert full.test_acc == 0.77 and full.test_acc_equal_len is None and full.test_acc_unequal_len is None
    assert full.to_json() == STOPPED["full"]  # written back as it was read
    again = FullBaseline.from_json({**STOPPED["full"], "ser/test_acc_equal_len": 0.6, "ser/test_acc_unequal_len": 0.8})
    assert (again.test_acc_equal_len, again.test_acc_unequal_len) == (0.6, 0.8)
    assert FullBaseline.from_json(again.to_json()) == again
