"""GPU checks on the tiny world, skipped without CUDA. Run them, numbers printed, with

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/gpu -s

(a) one bf16 RLOO+R2M step on CUDA trains: finite losses, policy and R2M parameters changed;
(b) ``r2m bench cost`` on CUDA reports CUDA max-allocated > 0 for every phase of every arm;
(c) R2M's overhead, step time of RLOO+R2M over RLOO, is printed and below 1.5 (a loose bound).

``R2M_GPU_TEST_DEVICE=cpu`` runs the same code on the CPU (CUDA-only assertions skipped): a check of
the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from r2m.config.parsing import load_config

DEVICE = os.environ.get("R2M_GPU_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs CUDA")]

BF16 = ["policy.dtype=bfloat16", "reward.dtype=bfloat16", "run.mixed_precision=bf16", f"run.device={DEVICE}"]


def test_bf16_rloo_r2m_step(tiny, world_artifacts) -> None:
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    run = build_run(load_config(None, [*tiny, *BF16, "reward.r2m.enabled=true", "run.name=gpu-bf16-step"]))
    policy = run.models.unwrapped_policy()
    first = next(policy.parameters())
    assert first.dtype == torch.float32 and first.device.type == DEVICE  # fp32 master weights (r2m.runtime.precision)
    assert next(run.models.ref.parameters()).dtype == torch.bfloat16  # the frozen reference keeps policy.dtype
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    rm_before = run.grebt.model.trainable_state()
    rows = [train_step(run, s) for s in (1, 2)]
    for row in rows:
        assert "guard/skipped_step" not in row and row.get("guard/skipped_minibatches", 0) == 0, row
        for key in ("loss/policy", "r2m/grebt", "reward/proxy", "kl", "policy/grad_norm"):
            assert math.isfinite(row[key]), (key, row[key])
    changed = {n: (before[n] != p.detach()).float().mean().item() for n, p in policy.named_parameters()}
    rm_after = run.grebt.model.trainable_state()
    rm_changed = [k for k in rm_before if not torch.equal(rm_before[k], rm_after[k])]
    print(f"\n[gpu] bf16 RLOO+R2M on {DEVICE}: loss/policy {[round(r['loss/policy'], 4) for r in rows]}, "
          f"r2m/grebt {[round(r['r2m/grebt'], 4) for r in rows]}, policy tensors changed "
          f"{sum(v > 0 for v in changed.values())}/{len(changed)} (elements changed, mean over tensors: "
          f"{sum(changed.values()) / len(changed):.3f}), R2M tensors changed {len(rm_changed)}/{len(rm_before)}, "
          f"s/step {[round(r['time/step'], 4) for r in rows]}")
    assert any(v > 0 for v in changed.values()) and rm_changed
    if ON_CUDA:
        print(f"[gpu] {torch.cuda.get_device_name()}: max allocated "
              f"{torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")


@pytest.fixture(scope="module")
def cost(tiny, world_artifacts) -> dict:
    from r2m.recipes.bench import bench_cost, format_cost

    result = bench_cost(load_config(None, [*tiny, *BF16, "run.name=gpu-cost"]), steps=6)
    print("\n[gpu] r2m bench cost, tiny world, bf16\n" + format_cost(result))
    return result


def test_cost_report_has_cuda_peaks_for_every_phase(cost) -> None:
    arms = {**{f"rl/{k}": v for k, v in cost["rl"].items()},
            **{f"rm_update/{k}": v for k, v in cost["rm_update"].items()}}
    assert cost["device"].startswith(DEVICE)
    for name, arm in arms.items():
        assert arm["phases"], name
        for phase, stats in arm["phases"].items():
            assert stats["time_s"] > 0 and stats["peak_rss_mb"] > 0, (name, phase, stats)
            if ON_CUDA:
                assert stats["cuda_peak_mb"] > 0 and stats["cuda_growth_mb"] >= 0, (name, phase, stats)
        if ON_CUDA:
            assert arm["cuda_max_allocated_mb"] > 0, name
    assert {"generate", "logprobs", "reward", "update", "rm_update", "step"} <= set(cost["rl"]["rloo_r2m"]["phases"])


def test_r2m_overhead_ratio(cost) -> None:
    ratios = cost["ratios"]
    ratio = ratios["step_time_r2m_over_rloo"]
    print(f"\n[gpu] R2M overhead on {cost['device']}: step time R2M/RLOO {ratio:.3f}, "
          f"CUDA max allocated R2M/RLOO {ratios.get('cuda_max_allocated_r2m_over_rloo', float('nan')):.3f}, "
          f"full/lightweight RM update time {ratios['rm_update_time_full_over_lightweight']:.3f}")
    assert math.isfinite(ratio) and ratio > 0
    if ON_CUDA:  # on a shared CPU the tiny world's step times are too noisy for a bound
        assert ratio < 1.5
