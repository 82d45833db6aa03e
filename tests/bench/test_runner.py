"""The reference runner of a bench design (r2m_bench.runner), with RL and SER faked."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import r2m_bench.runner as runner
from r2m_bench.design import Arm, BenchDesign, Cell, KLRegime, Sweep
from r2m_bench.runner import RESULT_FILE, run_design

DESIGN = BenchDesign(
    name="fake", cells=(Cell("length", "RLOO", (Arm.VANILLA, Arm.ORACLE, Arm.R2M), (0, 1, 2)),
                        Cell("length", "RLOO", (Arm.VANILLA, Arm.ORACLE), (0, 1, 2), KLRegime.TARGETED)),
    base=(), steps=20, sweep=Sweep("length", "RLOO", (1e-5, 1e-4), ("random",), (0.6,), (100, 101)),
    ser_worlds=("noisy",), ser_seeds=(0, 1, 2), budgets=(0.1, 0.2), headline_budget=0.1, kl_target=0.2)


lrs: dict = {}


def _fake_rl(calls):
    def run_rl(cfg):
        calls.append(cfg.run.name)
        lrs[cfg.run.name] = (cfg.reward.r2m.enabled, cfg.reward.r2m.lr, cfg.run.seed)
        lift = 0.1 if cfg.reward.r2m.pair_choice.value == "gold" else 0.0
        lift += 0.05 if cfg.reward.r2m.lr == 1e-4 else 0.0
        run_dir = Path(cfg.run.root) / cfg.run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = [{"step": s, "eval/kl": kl, "eval/gold": 0.6 + lift * (s > 0) + 0.01 * cfg.run.seed}
                for s, kl in ((0, 0.0), (10, 0.15), (20, 0.3))]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        acc = {"rm_acc/vanilla": 0.8, "rm_acc/r2m_after": 0.8} if cfg.reward.r2m.enabled else {}
        return SimpleNamespace(rm_accuracy=acc)
    return run_rl


def test_run_design_writes_everything_and_resumes(tmp_path, monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(runner, "run_rl", _fake_rl(calls))
    monkeypatch.setattr(runner, "run_ser", lambda cfg: SimpleNamespace(
        table=(["method", "a", "b", "acc"], [["Loop 0", 0, 0, 0.7], ["SER", 0, 0, 0.72], ["Full", 0, 0, 0.8]]),
        history=[{"loop": 0, "status": 1, "ser/selected": 10, "ser/selected_frac": 0.1, "ser/val_acc": 0.7,
                  "ser/test_acc": 0.7}], stop={"reason": "max_loops", "loop": 0}))
    root, out = str(tmp_path / "runs"), tmp_path / "out"
    outcome = run_design(DESIGN, root, out, commit="abc", command="test")
    assert outcome.setting is not None and outcome.setting.lr == 1e-4  # the sweep's best, carried over
    test_r2m = [lr for on, lr, seed in lrs.values() if on and seed < 100]  # R2M-family arms on the test seeds
    assert test_r2m and set(test_r2m) == {1e-4}
    doc = json.loads(outcome.verdicts.read_text())
    oracle = [v for v in doc["verdicts"] if v["claim"] == "oracle_vs_vanilla" and v["metric"] == "gold@kl=0.1"]
    assert oracle and oracle[0]["verdict"] == "better"
    assert (out / "matched_kl_fake.md").read_text().startswith("| world | method |")
    assert "`ser_vs_loop0`" in outcome.table and (out / "verdicts_fake.md").read_text() == outcome.table
    assert {p.name for p in outcome.plots} == {"frontier_fake_length.png", "frontier_fake_kl_length.png"}
    n = len(calls)
    assert all((Path(root) / c / RESULT_FILE).is_file() for c in calls)
    run_design(DESIGN, root, out, commit="abc", command="test")  # everything done: nothing reruns
    assert len(calls) == n
