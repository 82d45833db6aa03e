"""``r2m_bench.memory_host``: the host-memory formula by hand, the real models' parameter counts, and the formula
against the library's own loading measured in fresh processes."""

from __future__ import annotations

import sys

import pytest

from r2m.config.parsing import load_config
from r2m.errors import ConfigError
from r2m_bench import memory_host as host
from r2m_bench import memory_phases as ph


def _cfg(*overrides: str):
    return load_config(None, ["policy.dtype=bfloat16", "reward.dtype=bfloat16", *overrides])


def test_upcast_peak_by_hand() -> None:
    """Tensors of 4 and 6 weights, bf16: the copy holds 20 B; upcasting the first adds its 16 B fp32 copy (36 B);
    then 16 + 12 B remain and the second's 24 B fp32 copy makes 52 B, the peak; fp32 needs no upcast."""
    assert host.upcast_peak([4, 6], "bfloat16") == 52.0
    assert host.upcast_peak([6, 4], "bfloat16") == 48.0  # the larger tensor first: 20 + 24, then 20 + 12 + 16
    assert host.upcast_peak([4, 6], "float32") == 40.0


def test_stage_bytes_by_hand() -> None:
    """Policy tensors of 4 and 6 weights and a 7-weight RM, bf16 checkpoints: the reference and the RM are mapped
    from their files (20 B, 14 B), so rank 0's anonymous bytes are the trained copy's upcast peak (52 B) and another
    rank's none; LoRA trains adapters over the mapped base; a dtype other than the checkpoint's is a copy."""
    cfg = _cfg()
    s = host.Stage
    bf16 = "bfloat16"
    assert host.stage_bytes([4, 6], 7, cfg, False, bf16, bf16) == {"policy": s(52.0, 20.0), "reward": s(0.0, 14.0)}
    assert host.stage_bytes([4, 6], 7, cfg, True, bf16, bf16) == {"policy": s(0.0, 20.0), "reward": s(0.0, 14.0)}
    assert host.stage_bytes([4, 6], 0, cfg, False, bf16, bf16) == {"policy": s(52.0, 20.0)}
    lora = host.stage_bytes([4, 6], 7, _cfg("policy.lora.enabled=true"), False, bf16, bf16)
    assert lora["policy"] == s(0.0, 20.0)
    # a checkpoint of unknown dtype: the reference and the RM are converted copies
    assert host.stage_bytes([4, 6], 7, cfg, True, None, None) == {"policy": s(20.0, 0.0), "reward": s(14.0, 0.0)}
    fp32 = host.stage_bytes([4, 6], 7, _cfg("policy.dtype=float32"), False, bf16, bf16)
    assert fp32["policy"] == s(80.0, 0.0)  # a 40 B fp32 reference and a 40 B fp32 copy, nothing to upcast


def test_param_counts_of_the_real_models() -> None:
    """The published sizes: Qwen2.5-0.5B 494,032,768 (tied embeddings); Llama-3-8B 8,030,261,248; the Skywork RM is
    that backbone without the LM head, one more embedding row (its pad token) and a 4096 x 1 score head."""
    assert host.param_count(ph.arch_of("Qwen/Qwen2.5-0.5B-Instruct", "p"), rm=False) == 494_032_768
    assert host.param_count(ph.arch_of("meta-llama/Meta-Llama-3-8B-Instruct", "p"), rm=False) == 8_030_261_248
    rm = 8_030_261_248 - 128256 * 4096 + 4096 + 4096
    assert host.param_count(ph.arch_of("Skywork/Skywork-Reward-V2-Llama-3.1-8B", "r"), rm=True) == rm


def test_host_result_per_rank_and_node() -> None:
    """Llama-3-8B + the 8B RM with R2M on 8 ranks, bf16 checkpoints: rank 0's peak is the trained copy at the end of
    its upcast (4 B a weight, plus the last tensor, the 128256 x 4096 LM head, still in bf16: 2 B a weight); the
    other ranks hold mapped pages and R2M's fp32 fusion ((2·4096 + 2·4096)·inner_dim weights, 4 B each); the node's
    page cache holds both checkpoints once."""
    cfg = load_config("configs/paper/r2m_llama3-8b_ultrafeedback_rloo.yaml", ["run.device=cpu"])
    res = host.host_result(cfg, 8, process_bytes=1e9)
    p, head = 8_030_261_248, 128256 * 4096
    fusion = 4 * 4096 * cfg.reward.r2m.inner_dim
    assert res["fusion_params"] == fusion
    assert res["rank0"]["stages_gb"]["policy"] == pytest.approx((4 * p + 2 * head) / 1e9)
    assert res["rank0"]["stages_gb"]["reward"] == pytest.approx(4 * fusion / 1e9)
    assert res["rank0"]["peak_gb"] == pytest.approx((4 * p + 2 * head) / 1e9 + 1)
    mapped = {"policy": 2 * p / 1e9, "reward": 2 * res["rm_params"] / 1e9}
    assert res["rank0"]["file_backed_gb"] == pytest.approx(mapped)
    assert res["other_ranks"]["peak_gb"] == pytest.approx(4 * fusion / 1e9 + 1)
    assert res["node_gb"] == pytest.approx(res["rank0"]["peak_gb"] + 7 * res["other_ranks"]["peak_gb"])
    assert res["node_page_cache_gb"] == pytest.approx(2 * (p + res["rm_params"]) / 1e9)
    one = host.host_result(cfg, 1, process_bytes=0.0)
    assert "other_ranks" not in one and one["node_gb"] == one["rank0"]["peak_gb"]


@pytest.mark.parametrize("override, named", [("rl.algorithm=ppo rl.ratio_level=token", "rl.algorithm=ppo"),
                                             ("rl.monitor.check_rm=some/rm", "rl.monitor.check_rm"),
                                             ("reward.r2m.backbone_dtype=float32", "reward.r2m.backbone_dtype")])
def test_loads_the_formula_does_not_count_are_refused(override, named) -> None:
    cfg = load_config("configs/paper/r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", ["run.device=cpu", *override.split()])
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        host.host_result(cfg, 8, process_bytes=0.0)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_formula_matches_the_library_loading_in_fresh_processes() -> None:
    """The library's own loading (policy and reference with fp32 masters; the policy on meta; the RM) grows the peak
    anonymous memory by what the formula says, within 5 MB + 5%, at a real vocabulary where the weights dwarf the
    allocator's noise, and on a layer-heavy model where freeing each bf16 original during the upcast is visible;
    the mapped checkpoints' pages touched stay near the files' size."""
    res = host.check("Qwen/Qwen2.5-0.5B-Instruct", "Skywork/Skywork-Reward-V2-Llama-3.1-8B", widths=(128,),
                     log=lambda m: None)
    by_stage = {c["stage"].split(",")[0] + ("" if "layers" not in c["stage"] else " layered")
                + ("" if "other" not in c["stage"] else " other"): c for c in res["cases"]}
    assert set(by_stage) == {"policy", "policy other", "reward", "policy layered"}
    for case in res["cases"]:
        assert abs(case["error_mb"]) < 5 + 0.05 * case["predicted_mb"], case
        assert case["file_touched_mb"] < case["file_mapped_mb"] + 20, case
    # the meta-device policy and the mapped reference and RM: no copy of the weights on the other ranks
    assert by_stage["policy other"]["measured_mb"] < 5 and by_stage["reward"]["measured_mb"] < 5
    # the upcast frees each bf16 original: the layer-heavy model measures well under 6 bytes a weight
    layered = by_stage["policy layered"]
    assert layered["measured_mb"] < layered["naive_mb"] - 30, layered
    assert res["process_bytes"] > 0
