"""Trainable 16-bit weights are kept as float32 masters (frozen ones keep their dtype): one RL step at lr 1e-6 on
a bfloat16 config moves the policy's weights, its norm weights included, which AdamW on bf16 weights rounds away."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from r2m.config.parsing import load_config
from r2m.runtime.precision import fp32_master_weights, master_dtype


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_one_bf16_step_at_lr_1e6_moves_every_policy_weight(tiny, world_artifacts, caplog) -> None:
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    cfg = load_config(None, [*tiny, "policy.dtype=bfloat16", "reward.dtype=bfloat16", "run.mixed_precision=bf16",
                             "rl.lr=1e-6", "rl.epochs=1", "rl.minibatches=1", "run.name=bf16-masters"])
    with caplog.at_level(logging.INFO, logger="r2m"):
        run = build_run(cfg)
    policy = run.models.unwrapped_policy()
    assert {p.dtype for p in policy.parameters()} == {torch.float32}  # the masters
    assert {p.dtype for p in run.models.ref.parameters()} == {torch.bfloat16}  # the frozen reference keeps its dtype
    assert any("float32 master weights" in r.getMessage() and r.getMessage().startswith("policy")
               for r in caplog.records)
    before, ref_before = _params(policy), _params(run.models.ref)
    row = train_step(run, 1)
    assert row.get("guard/skipped_minibatches", 0) == 0
    changed = {n: (before[n] != p.detach()).float().mean().item() for n, p in policy.named_parameters()}
    norms = {n: v for n, v in changed.items() if "norm" in n}
    print("\nshare of elements changed:", {n: round(v, 3) for n, v in changed.items()})
    assert norms and min(norms.values()) > 0.9, norms  # |w| = 1, bf16 ulp 2^-7: a 1e-6 step needs the master
    assert sum(changed.values()) / len(changed) > 0.9 and min(changed.values()) > 0.5, changed
    assert all(torch.equal(ref_before[n], p) for n, p in run.models.ref.named_parameters())
    run.run.close()


def test_lora_adapters_and_a_trained_head_are_float32_over_a_bf16_base() -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from r2m.config.models import LoRAConfig
    from r2m.models.lora import apply_lora

    cfg = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, num_labels=1, pad_token_id=0)
    model = apply_lora(LlamaForSequenceClassification(cfg).to(torch.bfloat16), LoRAConfig(enabled=True, r=4),
                       "seq_cls")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())  # peft's own upcast
    assert any(p.dtype == torch.bfloat16 for p in trainable.values())  # the score head (modules_to_save)
    assert fp32_master_weights(model, "reward model") > 0
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}  # the base stays 16-bit


def test_deepspeed_keeps_its_own_masters() -> None:
    from accelerate.utils import DistributedType

    ds = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, mixed_precision="bf16")
    layer = torch.nn.Linear(4, 4).to(torch.bfloat16)
    assert fp32_master_weights(layer, "policy", ds) == 0 and layer.weight.dtype == torch.bfloat16
    assert master_dtype("bfloat16", ds) == "bfloat16"
    assert master_dtype("bfloat16", SimpleNamespace(distributed_type=DistributedType.MULTI_GPU)) == "float32"


@pytest.mark.parametrize("mp", ["no", "bf16"])
def test_without_autocast_the_upcast_is_a_warning(mp, caplog) -> None:
    layer = torch.nn.Linear(4, 4).to(torch.float16)
    with caplog.at_level(logging.INFO, logger="r2m"):
        assert fp32_master_weights(layer, "sft", SimpleNamespace(distributed_type=None, mixed_precision=mp)) == 2
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warned) == (mp == "no") and layer.weight.dtype == torch.float32
