"""The prepared GPU check (scripts/gpu_check.sh runs it; not part of CI).

1. ``tests/gpu`` (bf16 RLOO+R2M step on CUDA, CUDA peaks per phase, R2M overhead on the tiny world);
2. a paper-shaped run: ``r2m rl -c configs/paper/r2m_qwen2.5-3b_ultrafeedback_rloo.yaml`` on random models of
   realistic size built from config (a Qwen2.5-0.5B-shaped Qwen2 policy, a Llama-3.2-1B-shaped Llama RM with the
   Llama 3.1 chat template, as the Skywork RM), bf16, 10 steps, against UltraFeedback-layout Parquet fixtures;
3. the same for vanilla RLOO (reward.r2m.enabled=false): R2M/vanilla step time and CUDA peak memory.

Writes one JSON (``--out``, default gpu_check.json) with every result, even when a part fails.
``--device cpu --tiny`` runs the same code small on a CPU (a check of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QWEN_0_5B = dict(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864)
LLAMA_1B = dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192)
TINY = dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
PAPER_SIZES = ["rl.steps=10", "rl.prompts_per_step=16", "rl.k=8", "rl.max_new_tokens=256", "rl.minibatches=4",
               "rl.micro_batch_size=8", "rl.rollout_batch_size=64", "rl.rollout_chunks=8", "rl.eval_every=10",
               "rl.save_every=10", "data.max_prompt_tokens=1024", "eval.batch_size=16", "run.log_with=[]",
               "run.progress=false"]
TINY_SIZES = ["rl.steps=3", "rl.prompts_per_step=4", "rl.k=2", "rl.max_new_tokens=6", "rl.minibatches=2",
              "rl.micro_batch_size=2", "rl.rollout_batch_size=4", "rl.rollout_chunks=2", "rl.eval_every=3",
              "rl.save_every=3", "data.max_prompt_tokens=200", "reward.r2m.inner_dim=16", "eval.batch_size=4",
              "run.log_with=[]", "run.progress=false"]


def run_gpu_tests(device: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "R2M_GPU_TEST_DEVICE": device,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "-s", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[gpu]")]
    return {"returncode": proc.returncode, "wall_s": time.perf_counter() - t0, "printed": lines,
            "tail": (proc.stdout + proc.stderr)[-3000:]}


def build_models(out: Path, tiny: bool) -> dict:
    import torch

    from r2m.models.families import Family, Size, save_family_model

    policy = Size(**(TINY if tiny else QWEN_0_5B))
    rm = Size(**(TINY if tiny else LLAMA_1B))
    return {Family.QWEN2_5: str(save_family_model(Family.QWEN2_5, out / "qwen2-0.5b", policy, dtype=torch.bfloat16)),
            "skywork": str(save_family_model(Family.LLAMA3_1, out / "llama-1b-rm", rm, rm=True, dtype=torch.bfloat16))}


def paper_run(models: dict, data: dict, root: Path, name: str, sizes: list[str], device: str, *extra: str) -> dict:
    """One in-process `r2m rl -c <Qwen RLOO+R2M config>` run; its step times and CUDA peak."""
    import gc

    import torch

    from r2m.cli import main
    from r2m.recipes.rehearsal import PAPER_DIR, Plan
    from r2m.runtime.runlog import read_metrics

    plan = Plan(PAPER_DIR / "r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", models, data, root, sizes)
    baseline = 0.0
    if device == "cuda":  # what an earlier run in this process left allocated does not count
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    rc = main(plan.argv(f"run.name={name}", f"run.device={device}", *extra))
    wall = time.perf_counter() - t0
    metrics = plan.run_dir.parent / name / "metrics.jsonl"
    rows = [r for r in read_metrics(metrics) if "time/step" in r] if rc == 0 else []
    steps = [r["time/step"] for r in rows]
    return {"returncode": rc, "wall_s": wall, "steps": len(rows), "step_time_s": steps,
            "median_step_s_after_first": statistics.median(steps[1:]) if len(steps) > 1 else None,
            "losses_finite": all(all(v == v and abs(v) != float("inf") for k, v in r.items()
                                     if k.startswith(("loss/", "r2m/", "reward/"))) for r in rows),
            "cuda_baseline_mb": baseline if device == "cuda" else None,
            "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 - baseline if device == "cuda" else None,
            "last_metrics": {k: v for k, v in (rows[-1] if rows else {}).items()
                             if k.startswith(("reward/", "kl", "r2m/", "loss/", "data/", "rm_acc/"))}}


def part(results: dict, name: str, fn, *args) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as e:  # every part reports, whatever another did
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    results[name]["part_wall_s"] = time.perf_counter() - t0
    print(f"[gpu_check] {name}: {json.dumps(results[name])[:400]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (a check of the script)")
    parser.add_argument("--skip-tests", action="store_true", help="skip tests/gpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import accelerate
    import peft
    import torch
    import transformers

    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": args.device,
                     "tiny": args.tiny, "python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "peft": peft.__version__, "cuda": torch.version.cuda,
                     "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    t0 = time.perf_counter()
    if not args.skip_tests:
        part(results, "tests_gpu", run_gpu_tests, args.device)
    from r2m.recipes.rehearsal import write_datasets

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_datasets(tmp / "hub")
        models = build_models(tmp / "models", args.tiny)
        sizes = TINY_SIZES if args.tiny else PAPER_SIZES
        part(results, "paper_r2m_bf16", paper_run, models, data, tmp / "runs", "gpu-r2m", sizes, args.device)
        part(results, "paper_vanilla_bf16", paper_run, models, data, tmp / "runs", "gpu-vanilla", sizes, args.device,
             "reward.r2m.enabled=false")
    r2m, van = results["paper_r2m_bf16"], results["paper_vanilla_bf16"]
    if r2m.get("median_step_s_after_first") and van.get("median_step_s_after_first"):
        ratio = r2m["median_step_s_after_first"] / van["median_step_s_after_first"]
        results["ratio_step_time_r2m_over_vanilla"] = ratio
    if r2m.get("cuda_max_allocated_mb") and van.get("cuda_max_allocated_mb"):
        results["ratio_cuda_peak_r2m_over_vanilla"] = r2m["cuda_max_allocated_mb"] / van["cuda_max_allocated_mb"]
    results["wall_s"] = time.perf_counter() - t0
    ok = (results.get("tests_gpu", {}).get("returncode", 0) == 0 and r2m.get("returncode") == 0
          and van.get("returncode") == 0 and r2m.get("steps") == van.get("steps") and r2m.get("losses_finite"))
    results["ok"] = bool(ok)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"[gpu_check] ok={ok}; results in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
