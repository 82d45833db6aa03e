"""r2m.recipes.pipeline: which data each command reads, the user's model paths, the precision cache-key part."""

from __future__ import annotations

from r2m.config.parsing import load_config
from r2m.recipes.pipeline import precision_part, rl_needs, ser_needs, user_models


def test_rl_needs() -> None:
    # data.eval_prompts is optional: without it a run with a user's model does not evaluate (as TRL)
    assert rl_needs(load_config(overrides=["reward.source=gold"])) == ("prompts",)
    r2m = load_config(overrides=["reward.source=model", "reward.r2m.enabled=true"])
    assert rl_needs(r2m) == ("prompts", "pref_eval")  # Table 3's held-out pairs


def test_ser_needs() -> None:
    assert ser_needs(load_config(overrides=["ser.ppo=false"])) == ("pref_train", "pref_eval")
    assert ser_needs(load_config(overrides=["ser.ppo=true", "ser.ppo_prompts=world"])) == (
        "pref_train", "pref_eval", "eval_prompts", "prompts")


def test_user_models_leave_out_the_worlds(tmp_path) -> None:
    assert user_models(load_config(overrides=[f"run.root={tmp_path}"])) == []
    cfg = load_config(overrides=[f"run.root={tmp_path}", "policy.path=/models/my-sft"])
    assert user_models(cfg) == ["policy.path=/models/my-sft"]


def test_full_precision_leaves_cache_keys_unchanged() -> None:
    assert precision_part(load_config(overrides=["run.device=cpu"])) == ()
