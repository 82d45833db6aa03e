"""scripts/gpu_check.py on a CPU: every part writes its key, a failing or overrunning part does not stop the others,
and the JSON is valid after every part."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
PARTS = [f"P{i}" for i in range(7)]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cpu_self_test_writes_every_part_after_an_injected_failure(tmp_path) -> None:
    """The CI self-test: tiny shapes on the CPU, P3 made to raise; every other part still runs and reports (budgets
    tripled: this checks the script, not the speed of a busy CI machine)."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--inject-failure", "P3", "--budget-scale", "3"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())  # valid JSON, written atomically
    assert [p for p in PARTS if p not in report] == []
    status = {p: report[p]["status"] for p in PARTS}
    detail = {p: report[p].get("error") or report[p].get("reason") for p in PARTS}
    assert status["P3"] == "failed" and "injected failure" in report["P3"]["error"], detail
    assert "traceback" in report["P3"]
    assert all(status[p] == "ok" for p in ("P0", "P1", "P2", "P4", "P5")), detail
    assert status["P6"] == "skipped" and "--launch-on-cpu" in report["P6"]["reason"]  # the GPU's part
    assert all(isinstance(report[p]["seconds"], float) for p in PARTS)
    assert proc.returncode == 1 and report["meta"]["failed_parts"] == ["P3"]
    assert [f.name for f in tmp_path.iterdir()] == ["gpu_check.json"]  # no temporary file left behind

    p0, p4, p5 = (report[p]["measurements"] for p in ("P0", "P4", "P5"))
    assert p0["versions"]["torch"] and p0["r2m_pins"]["torch"]["satisfied"] is True
    assert p0["cuda_available"] is False and "vllm" in p0
    assert p4["hf"]["one_call"]["tokens_per_s"] > 0 and p4["hf"]["8_calls"]["rows_per_call"] == 2
    assert p4["vllm"]["status"] == "skipped"  # no vLLM (and no CUDA) here
    assert p5["steps"] == [1, 2, 3] and p5["checkpoints"][:1] == ["final"]
    assert p5["policy_moved"]["changed_tensors"] > 0 and p5["r2m_moved"]["changed_tensors"] > 0
    assert p5["first_minibatch_ratio"][0]["rms_log_ratio"] <= p5["ratio_tolerance"]
    assert any("at step 2" in m for m in p5["resumed"])


def test_a_part_over_its_budget_is_timed_out_and_the_next_part_runs(tmp_path) -> None:
    gc = _load_script()
    report = gc.Report(tmp_path / "r.json", {"device": "cpu"})
    ctx = gc.Ctx("cpu", True, None, tmp_path, {}, False, {})
    t0 = time.perf_counter()

    def slow(ctx):
        ctx.progress["first_half_s"] = 0.1
        time.sleep(30)

    entry = gc.run_part(report, "P1", slow, ctx, budget_s=0.5)
    assert entry["status"] == "timed_out" and time.perf_counter() - t0 < 10
    assert entry["measurements_so_far"] == {"first_half_s": 0.1}
    assert gc.run_part(report, "P2", lambda ctx: {"x": 1.5}, ctx, budget_s=5)["status"] == "ok"
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["P1"]["status"] == "timed_out" and data["P2"]["measurements"] == {"x": 1.5}
    assert data["P0"]["status"] == "not_run"  # never started: said so, not left out


def test_checks_that_fail_after_measuring_fail_the_part_and_keep_the_measurements(tmp_path) -> None:
    gc = _load_script()
    report = gc.Report(tmp_path / "r.json", {})
    ctx = gc.Ctx("cpu", True, None, tmp_path, {}, False, {})
    entry = gc.run_part(report, "P5", lambda ctx: {"steps": [1], "failed_checks": ["weights did not move"]}, ctx, 5)
    assert entry["status"] == "failed" and entry["error"] == "check failed: weights did not move"
    assert entry["measurements"]["steps"] == [1]
    entry = gc.run_part(report, "P6", lambda ctx: {"skipped_reason": "no FSDP here", "steps": [1, 2]}, ctx, 5)
    assert entry["status"] == "skipped" and entry["reason"] == "no FSDP here"


def test_depth_extrapolation_is_linear_in_depth() -> None:
    gc = _load_script()
    at = {2: {"peak_gib": 3.0, "seconds": 0.5, "loss": 9.0}, 4: {"peak_gib": 4.0, "seconds": 0.75, "loss": 1.0}}
    assert gc.probes.extrapolate(at, 32) == {"peak_gib": 18.0, "seconds": 4.25}  # 3 + 0.5*30; 0.5 + 0.125*30
    assert gc.probes.extrapolate({1: {"oom": True}, 2: {"peak_gib": 1.0}}, 8) == {"oom": True}


def test_pins_are_read_from_pyproject() -> None:
    gc = _load_script()
    pins = gc.pins_against_installed()
    assert {"torch", "transformers", "accelerate", "peft", "datasets"} <= set(pins)
    assert pins["transformers"]["pin"].startswith(">=") and pins["transformers"]["installed"]


@pytest.mark.slow
def test_fsdp_part_launches_checkpoints_and_resumes_on_cpu(tmp_path) -> None:
    """P6's own code on the CPU: the world built first in one process, then accelerate launch with the FSDP config
    (r2m routes FSDP2 over gloo on a CPU), the child's report, a sharded checkpoint, the resume and the run checks."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--parts", "P6", "--launch-on-cpu", "--budget-scale", "4"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=900)
    p6 = json.loads(out.read_text())["P6"]
    assert p6["status"] == "ok", (p6.get("error"), proc.stdout[-2000:])
    m = p6["measurements"]
    assert m["world"]["rc"] == 0 and m["run"]["rc"] == 0 and m["resume"]["rc"] == 0
    assert m["run"]["distributed_type"] == "FSDP" and m["run"]["fsdp_version"] == 2
    assert m["steps"] == [1, 2, 3] and m["policy_moved"]["changed_tensors"] > 0
