"""r2m.recipes.pipeline: which data each command reads, the user's model paths, the precision cache-key part, the
world cache's format version."""

from __future__ import annotations

import json

import pytest

from r2m.config.parsing import load_config
from r2m.errors import FormatVersionError
from r2m.recipes.pipeline import CACHE_FILE, precision_part, rl_needs, ser_needs, user_models, world_data


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


def test_the_precision_is_a_cache_key_part() -> None:
    assert precision_part(load_config(overrides=["run.device=cpu"])) == {"mixed_precision": "no"}


SMALL_WORLD = ["world.n_sft=20", "world.n_pref_train=20", "world.n_pref_eval=10", "world.n_rl_prompts=10",
               "world.n_eval_prompts=4", "world.n_pref_policy=10"]


@pytest.mark.parametrize("version", [None, 0])
def test_a_world_cache_entry_of_another_format_version_is_refused_by_name(tmp_path, version) -> None:
    """Each entry holds cache.json (format_version 1), written before it is built; an entry without it (an older
    r2m's) or of another version is refused, naming it and what to do, and never read."""
    cfg = load_config(overrides=[f"run.root={tmp_path}", *SMALL_WORLD])
    files = world_data(cfg)
    entry = files.summary.parent
    assert json.loads((entry / CACHE_FILE).read_text())["format_version"] == 1
    assert world_data(cfg) == files  # built: reused
    if version is None:
        (entry / CACHE_FILE).unlink()
    else:
        (entry / CACHE_FILE).write_text(json.dumps({"format_version": version}))
    has = "no format version" if version is None else f"format version {version}"
    with pytest.raises(FormatVersionError, match=rf"{entry.name}/cache\.json: this world cache entry has {has}.*; "
                                                 r"this r2m reads version 1: delete the directory"):
        world_data(cfg)
