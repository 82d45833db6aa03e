"""The RL run's end: a Table 3 failure keeps the final model and metrics (and says so); eval.max_prompts is counted."""

from __future__ import annotations

import json
from pathlib import Path

from r2m.cli import main


def test_a_table3_failure_keeps_the_run_and_is_recorded(tiny, world_artifacts, monkeypatch) -> None:
    import r2m.recipes.rl.evaluation as evaluation

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(evaluation, "feedback_pairwise_accuracy", out_of_memory)
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, "run.name=table3-fails", "reward.r2m.enabled=true", "rl.steps=1",
                 "eval.max_prompts=5"]) == 0  # the run's outputs are complete: exit status 0
    run = root / "table3-fails"
    assert (run / "checkpoints" / "final" / "config.json").is_file() and (run / "checkpoints" / "final" / "r2m").is_dir()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["rm_acc/failed"] == 1.0 and "eval/gold" in rows[-1] and "rm_acc/r2m_after" not in rows[-1]
    assert "CUDA out of memory (simulated)" in (run / evaluation.TABLE3_ERROR).read_text()
    # 16 evaluation prompts, 5 evaluated: the 11 left out are counted in the first step's row.
    assert rows[1]["data/eval_prompts_capped"] == 11
