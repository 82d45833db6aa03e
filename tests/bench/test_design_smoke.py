"""`r2m bench --preset smoke` end to end on the tiny world (CI runs the whole smoke preset here): the three
phases, the JSON files, the report, a resume that trains nothing, `report --from` and `cell`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2m.cli import main
from r2m_bench.design import SMOKE, Phase, phase_runs
from r2m_bench.trajectories import read_trajectories


@pytest.mark.slow
def test_bench_smoke_preset(tiny, world_artifacts, tmp_path, capsys) -> None:
    root = tiny[-1]
    out = tmp_path / "BENCHMARKS.md"
    assert main(["bench", "run", "--preset", "smoke", "--workers", "2", root, "--out", str(out)]) == 0
    assert "bench cost estimate (2 workers)" in capsys.readouterr().out
    budgets = json.loads((tmp_path / "budgets.json").read_text())
    b = budgets["worlds"]["length"]["budgets"]
    assert len(b) == 3 and 0 < b[0] <= b[1] <= b[2] and budgets["worlds"]["length"]["step_cap"] >= 1
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    assert len(tuning["grid"]) == 2 and all(len(p["fusion_weight_change"]) == 2 for p in tuning["grid"])
    traj = read_trajectories(tmp_path / "trajectories.json")
    expected = sum(len(phase_runs(SMOKE, p, traj.plan)) for p in Phase)
    assert len(traj.runs) == expected
    assert all(r.commit not in ("", "unknown", "not recorded") for r in traj.runs)
    rl = [r for r in traj.runs if r.step]
    assert rl and all(r.stop_reason in ("kl_reached", "step_cap", "steps") for r in rl)
    assert {r.stop_reason for r in rl if r.phase is Phase.TEST} <= {"kl_reached", "step_cap"}
    assert any("r2m/weight_change" in r.scalars for r in rl)
    doc = json.loads((tmp_path / "verdicts.json").read_text())
    assert {v["claim"] for v in doc["verdicts"] if v["primary"]} == {"r2m_vs_vanilla", "oracle_vs_vanilla",
                                                                     "ser_vs_loop0"}
    assert all(v["verdict"] == "not decidable" or v["verdict"] == "inactive"
               for v in doc["verdicts"])  # 2 seeds: never a verdict on the numbers
    assert set(json.loads((tmp_path / "calibration.json").read_text())["worlds"]["length"]) == {
        "0.25", "min_detectable_effect"}
    text = out.read_text()
    assert text.index("## Primary verdicts") < text.index("## Calibration ladder") < text.index("## Reading")
    # A rerun reads every run from its result file: nothing is trained again.
    runs = Path(root.split("=", 1)[1])
    stamps = sorted(f.stat().st_mtime_ns for f in runs.glob("b2-smoke-*/bench14.json"))
    assert len(stamps) == expected
    assert main(["bench", "--preset", "smoke", root, "--out", str(out)]) == 0
    assert sorted(f.stat().st_mtime_ns for f in runs.glob("b2-smoke-*/bench14.json")) == stamps
    # The report again from trajectories.json alone.
    (tmp_path / "verdicts.json").unlink()
    assert main(["bench", "report", "--from", str(tmp_path / "trajectories.json"), "--out", str(out)]) == 0
    assert json.loads((tmp_path / "verdicts.json").read_text())["verdicts"]
    # One cell again, under its own root, with the design's overrides.
    cells = tmp_path / "cells"
    assert main(["bench", "cell", "--preset", "smoke", "--world", "length", "--arm", "ladder_0.25", "--seed", "1",
                 "--from", str(tmp_path / "trajectories.json"), "--root", str(cells), root]) == 0
    (name,) = [r.name for r in traj.runs if r.arm.value == "ladder_0.25" and r.seed == 1]
    assert (cells / name / "bench14.json").is_file()
