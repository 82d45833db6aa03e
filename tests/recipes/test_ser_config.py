"""SER's nested config: ser.lora (a LoRAConfig), ser.rl (the PPO stage's rl.* overrides), one RM factory; the loop
state's key.

The PPO stage's expected values are those of the flat layout before the nesting (ser.lora_r, ser.ppo_steps, ...),
computed on that code: the PPO stage's RL config must not have moved."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from r2m.config.enums import Algorithm
from r2m.errors import ConfigError
from r2m.config.models import LoRAConfig
from r2m.config.training import RLConfig
from r2m.config.jobs import SERRLOverrides
from r2m.config.parsing import load_config, to_dict
from r2m.recipes.ser import state_key
from r2m.recipes.ser_ppo import ppo_config

SER_YAML = "configs/world/ser.yaml"


@pytest.mark.parametrize("override", ["ser.tau_high=0.6", "ser.loss=bt", "ser.lora.enabled=true",
                                      "ser.lora.target_modules=[q_proj]", "rm.lr=0.002", "world.rm_seed=3",
                                      "run.seed=1", "reward.lora.enabled=true", "data.max_response_tokens=5"])
def test_state_key_follows_what_shapes_the_loop(override) -> None:
    assert state_key(load_config(SER_YAML, [override])) != state_key(load_config(SER_YAML))


@pytest.mark.parametrize("override", ["ser.max_loops=9", "ser.keep=best_val", "ser.ppo=false", "ser.rl.steps=7",
                                      "rl.steps=3", "run.name=other", "reward.lora.r=4", "rm.log_every=5"])
def test_state_key_ignores_what_may_change_on_resume(override) -> None:
    """How far the loop goes, the kept RM, the PPO stage, the run's name, and reward.lora's fields while it is off."""
    assert state_key(load_config(SER_YAML, [override])) == state_key(load_config(SER_YAML))


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
