"""SER's nested config: ser.lora (a LoRAConfig), ser.rl (the PPO stage's rl.* overrides), one RM factory.

The expected values are those of a flat layout (ser.lora_r, ser.ppo_steps, ...), computed on code that had it:
the PPO stage's RL config and the loop's state key must not have moved."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from r2m.config import Algorithm, ConfigError, LoRAConfig, RLConfig, SERRLOverrides, load_config, to_dict
from r2m.recipes.ser import ppo_config, state_key

# (config, overrides) -> state key computed with the flat ser.* layout (ser.lora=true for ser.lora.enabled=true).
OLD_KEYS = {
    (None, ()): "63c13cefe2",
    ("configs/world/ser.yaml", ()): "63c13cefe2",
    ("configs/world/ser.yaml", ("ser.lora.enabled=true",)): "475ae16b82",
    ("configs/world/ser.yaml", ("ser.lora.enabled=true", "ser.lora.r=4")): "356eef75e6",
    ("configs/world/ser.yaml", ("reward.lora.enabled=true",)): "87a46653bb",
    ("configs/paper/ser_hh_rlhf.yaml", ()): "543587b046",
    ("configs/paper/ser_ultrafeedback.yaml", ()): "ecc1184848",
}


@pytest.mark.parametrize("path,overrides", list(OLD_KEYS))
def test_state_key_unchanged_by_the_nested_layout(path, overrides) -> None:
    # A ser_state.json of the flat layout still resumes: the key hashes the loop's fields in that layout.
    assert state_key(load_config(path, list(overrides))) == OLD_KEYS[(path, overrides)]


# The PPO stage's rl.* as the old ppo_config set them: (rl.steps, rl.beta, rl.kl_adaptive, rl.kl_target).
OLD_PPO_RL = {"configs/world/ser.yaml": (100, 0.2, True, 0.1), "configs/paper/ser_hh_rlhf.yaml": (1200, 0.2, True, 0.1),
              "configs/paper/ser_ultrafeedback.yaml": (1200, 0.2, True, 0.1)}


@pytest.mark.parametrize("path", list(OLD_PPO_RL))
def test_ppo_stage_rl_config_as_before(path) -> None:
    cfg = load_config(path)
    ppo = ppo_config(cfg, Path("/rm"), Path("/prompts.jsonl"))
    steps, beta, adaptive, target = OLD_PPO_RL[path]
    expected = dataclasses.replace(cfg.rl, algorithm=Algorithm.PPO, steps=steps, beta=beta, kl_adaptive=adaptive,
                                   kl_target=target)
    assert to_dict(ppo.rl) == to_dict(expected)
    assert (ppo.reward.source.value, ppo.reward.path, ppo.reward.scaling.value) == ("model", "/rm", "sigmoid_centered")


def test_ser_rl_fields_are_rl_fields() -> None:
    # ser.rl.x becomes rl.x by name: every field must exist in RLConfig with the same type.
    rl = {f.name: f.type for f in dataclasses.fields(RLConfig)}
    for f in dataclasses.fields(SERRLOverrides):
        assert rl.get(f.name) == f.type, f.name
    cfg = load_config(None, ["ser.rl.steps=7", "ser.rl.beta=0.05", "ser.rl.kl_adaptive=false"])
    ppo = ppo_config(cfg, Path("/rm"), Path("/p.jsonl")).rl
    assert (ppo.steps, ppo.beta, ppo.kl_adaptive, ppo.kl_target) == (7, 0.05, False, 0.1)


def test_ser_lora_defaults_and_errors() -> None:
    lora = load_config(None, ["ser.lora.enabled=true"]).ser.lora
    assert isinstance(lora, LoRAConfig) and (lora.r, lora.alpha, lora.dropout) == (8, 32, 0.1)  # SER App. C.3
    with pytest.raises(ConfigError, match=r"ser\.lora\.r: expected >= 1"):
        load_config(None, ["ser.lora.r=0"])
    with pytest.raises(ConfigError, match=r"ser\.rl\.steps: expected >= 1"):
        load_config(None, ["ser.rl.steps=0"])
    with pytest.raises(ConfigError, match=r"ser\.ppo_steps: unknown key"):  # the old flat keys are refused by name
        load_config(None, ["ser.ppo_steps=3"])


def test_ser_lora_rm_through_the_factory_matches_the_old_peft_defaults() -> None:
    # The old SER path: peft.LoraConfig(r, alpha, dropout, SEQ_CLS, modules_to_save=["score"]), peft's own targets.
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from r2m.updates.rm import make_trainable_rm

    torch.manual_seed(0)
    base = LlamaForSequenceClassification(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                                       num_hidden_layers=2, num_attention_heads=2, num_labels=1,
                                                       pad_token_id=0))
    lora = load_config(None, ["ser.lora.enabled=true"]).ser.lora
    torch.manual_seed(1)
    old = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                                         task_type=TaskType.SEQ_CLS, modules_to_save=["score"]))
    torch.manual_seed(1)
    new = make_trainable_rm(copy.deepcopy(base), None, lora).peft
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert old_sd.keys() == new_sd.keys() and any("lora_A" in k for k in new_sd)
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd)
    trainable = lambda m: sorted(n for n, p in m.named_parameters() if p.requires_grad)  # noqa: E731
    assert trainable(old) == trainable(new)
