"""Closed-choice config fields are Enums, parsed (and validated) in one place, saved as the same strings."""

from __future__ import annotations

import enum

import pytest
import yaml

from r2m.errors import ConfigError
from r2m.config.parsing import load_config, save_config

CLOSED = ["run.device", "run.resume", "run.mixed_precision", "data.overlong", "data.format", "data.on_mismatch",
          "policy.dtype", "reward.dtype", "reward.scaling", "reward.r2m.hidden_device", "reward.r2m.hidden_dtype",
          "reward.r2m.backbone_dtype", "rl.generator", "rl.critic_init", "rl.vllm.dtype"]


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("dotted", CLOSED)
def test_closed_choice_is_an_enum_saved_as_its_string(dotted, tmp_path) -> None:
    value = _get(load_config(), dotted)
    assert isinstance(value, enum.Enum) and isinstance(value, str)
    save_config(load_config(), tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    node = saved
    for part in dotted.split("."):
        node = node[part]
    assert type(node) is str and node == value.value


def test_log_with_holds_trackers() -> None:
    cfg = load_config(overrides=["run.log_with=[tensorboard,wandb]"])
    assert [t.value for t in cfg.run.log_with] == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"run.log_with\[0\]: expected one of tensorboard, wandb, trackio, mlflow, "
                                          r"comet_ml, aim, clearml, dvclive, swanlab, all, none, got 'neptune'"):
        load_config(overrides=["run.log_with=[neptune]"])  # a transformers integration accelerate has no tracker for


@pytest.mark.parametrize("override, message", [
    ("run.device=tpu", "run.device: expected one of auto, cpu, cuda, got 'tpu'"),
    ("run.resume=always", "run.resume: expected one of never, auto, got 'always'"),
    ("data.overlong=wrap", "data.overlong: expected one of truncate, skip, got 'wrap'"),
    ("policy.dtype=int8", "policy.dtype: expected one of float32, bfloat16, float16, got 'int8'"),
    ("reward.r2m.backbone_dtype=fp8", "reward.r2m.backbone_dtype: expected one of same, float32, bfloat16, float16"),
    ("rl.critic_init=random", "rl.critic_init: expected one of reward, policy, got 'random'"),
])
def test_a_bad_choice_names_the_field_and_the_choices(override, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(overrides=[override])


def test_members_read_as_their_strings() -> None:
    """StrEnum: formatting, hashing and comparison are those of the value (messages and look-ups unchanged)."""
    cfg = load_config(overrides=["run.mixed_precision=bf16", "policy.dtype=bfloat16"])
    assert f"{cfg.run.mixed_precision}" == "bf16" and cfg.run.mixed_precision == "bf16"
    assert {"bfloat16": 1}[cfg.policy.dtype] == 1
