"""The RL run's end: a Table 3 failure keeps the final model and metrics (and says so); eval.max_prompts is counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2m.cli import main


@pytest.mark.slow
def test_a_table3_failure_keeps_the_run_and_is_recorded(tiny, world_artifacts, monkeypatch) -> None:
    import r2m.recipes.rl.evaluation as evaluation

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(evaluation, "feedback_pairwise_accuracy", out_of_memory)
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, "run.name=table3-fails", "reward.r2m.enabled=true", "rl.steps=1",
                 "eval.max_prompts=5"]) == 0  # the run's outputs are complete: exit status 0
    run = root / "table3-fails"
    final = run / "checkpoints" / "final"
    assert (final / "config.json").is_file() and (final / "r2m").is_dir()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["rm_acc/failed"] == 1.0 and "eval/gold" in rows[-1] and "rm_acc/r2m_after" not in rows[-1]
    assert "CUDA out of memory (simulated)" in (run / evaluation.TABLE3_ERROR).read_text()
    # 16 evaluation prompts, 5 evaluated: the 11 left out are counted in the first step's row.
    assert rows[1]["data/eval_prompts_capped"] == 11


def test_table3_reads_before_and_after_at_the_last_steps_omega(monkeypatch) -> None:
    """Table 3: the vanilla RM, R2M before any GREBT update (the saved initial state, h of the reference policy) and
    after (the final state, h of the final policy), both with ω of the run's last step: a KL-stopped run that ended
    at step 3 of rl.steps=10 reads ω(3), not ω(10)."""
    from types import SimpleNamespace

    import torch

    import r2m.recipes.rl.evaluation as evaluation
    from r2m.config.root import Config
    from r2m.eval.rm_accuracy import RMAccuracy
    from r2m.experience.rewards import R2MSchedule
    from r2m.recipes.rl.state import Models

    class Model:
        state = {"head.weight": torch.tensor([2.0])}  # the trained state

        def trainable_state(self):
            return dict(self.state)

        def load_trainable_state(self, state):
            self.state = dict(state)

    calls = []

    def feedback(model, policy, tok, rows, w, device, size):
        calls.append((model.state["head.weight"].item(), policy, w))
        return RMAccuracy(0.6 if policy == "ref" else 0.7, 0.5, 0.0, 0.0)

    monkeypatch.setattr(evaluation, "read_rows", lambda *a: [])
    monkeypatch.setattr(evaluation, "feedback_pairwise_accuracy", feedback)
    monkeypatch.setattr(evaluation, "vanilla_pairwise_accuracy", lambda m, rows, size: RMAccuracy(0.65, 0.5, 0.0, 0.0))
    schedule = R2MSchedule(omega_floor=0.2, total_steps=10)
    grebt = SimpleNamespace(model=Model(), schedule=schedule)
    models = Models(SimpleNamespace(unwrap_model=lambda m: m, device="cpu"), None, "final", "ref")
    out = evaluation.rm_accuracy(grebt, {"head.weight": torch.tensor([1.0])}, models, Config(), "pairs.jsonl", None, 3)
    assert calls == [(1.0, "ref", schedule.omega(3)), (2.0, "final", schedule.omega(3))]
    assert schedule.omega(3) != schedule.omega(10)
    assert out["rm_acc/vanilla"] == 0.65 and out["rm_acc/r2m_before"] == 0.6 and out["rm_acc/r2m_after"] == 0.7
    assert grebt.model.state["head.weight"].item() == 2.0  # the trained state is put back


def test_an_r2m_run_reports_its_movement_and_table3(tiny, world_artifacts) -> None:
    """At a working lr the GREBT update moves the RM: each step's row has r2m/weight_change (> 0, growing) and the
    fusion's share of the within-group spread; the result carries them and Table 3 (vanilla, before, after)."""
    from r2m.config.parsing import load_config
    from r2m.recipes.rl.run import run_rl

    res = run_rl(load_config(None, [*tiny, "run.name=r2m-moves", "reward.r2m.enabled=true", "reward.r2m.lr=1e-2",
                                    "rl.steps=3", "rl.monitor.enabled=false"]))
    rows = [r for r in res.history if "r2m/weight_change" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert 0 < rows[0]["r2m/weight_change"] < rows[-1]["r2m/weight_change"]
    # ω(0) = 1: the first update's reward has no fusion term; then it has a share of the spread.
    assert rows[0]["r2m/fusion_spread_share"] == 0.0 and all(0 < r["r2m/fusion_spread_share"] for r in rows[1:])
    assert res.r2m_movement["r2m/weight_change"] == rows[-1]["r2m/weight_change"]
    assert res.r2m_movement["r2m/fusion_spread_share"] == sum(r["r2m/fusion_spread_share"] for r in rows) / 3
    assert {"rm_acc/vanilla", "rm_acc/r2m_before", "rm_acc/r2m_after"} <= set(res.rm_accuracy)
    assert res.stop_reason == "steps" and res.stop_step == 3
