"""One RLOO+R2M step on tiny random models of each architecture our users run (Llama, Qwen2,
GPT-NeoX/Pythia, Gemma), saved with save_pretrained and loaded back through the public Auto path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from r2m.cli import main
from r2m.runtime.runlog import read_metrics

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
             max_position_embeddings=64)


def _config(arch: str, tok, **extra):
    import transformers as tf

    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, **SMALL, **extra)
    if arch == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(num_key_value_heads=1, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(rotary_pct=0.25, **common)
    if arch == "gemma":
        return tf.GemmaConfig(num_key_value_heads=1, head_dim=16, **common)
    raise AssertionError(arch)


def _save(arch: str, kind: str, variant: str, out: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from r2m.world.tokenizer import build_tokenizer

    tok = build_tokenizer(variant)
    torch.manual_seed(0)
    cls = AutoModelForCausalLM if kind == "policy" else AutoModelForSequenceClassification
    extra = {} if kind == "policy" else {"num_labels": 1}
    model = cls.from_config(_config(arch, tok, **extra))
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("policy_arch, rm_arch", [("llama", "qwen2"), ("qwen2", "gpt_neox"), ("gpt_neox", "gemma"),
                                                  ("gemma", "llama")])
def test_rloo_r2m_step(policy_arch, rm_arch, tiny, world_artifacts, world_data_args, tmp_path) -> None:
    policy = _save(policy_arch, "policy", "policy", tmp_path / "policy")
    rm = _save(rm_arch, "rm", "rm", tmp_path / "rm")  # another architecture and another tokenizer
    root = Path(tiny[-1].split("=", 1)[1])
    name = f"arch-{policy_arch}-{rm_arch}"
    data = world_data_args("prompts", "eval_prompts", "pref_eval")  # a user's model: data named
    assert main(["rl", *tiny, f"run.name={name}", f"policy.path={policy}", f"reward.path={rm}",
                 "reward.r2m.enabled=true", "rl.steps=1", *data]) == 0
    row = next(r for r in read_metrics(root / name / "metrics.jsonl") if r["step"] == 1)
    for key in ("loss/policy", "r2m/grebt", "reward/proxy", "kl"):
        assert math.isfinite(row[key]), key
