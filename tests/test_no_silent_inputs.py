"""Nothing silent about what real models read: no truncation without a count or a refusal, no toy world behind a
user's model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from r2m.cli import main
from r2m.config.parsing import load_config
from r2m.errors import ConfigError, ModelError
from r2m.runtime.runlog import read_metrics


def test_rm_max_length_must_cover_the_budget() -> None:
    with pytest.raises(ConfigError, match=r"reward.max_length: expected >= data.max_prompt_tokens \+ rl.max_new_tokens"
                                          r" = 1536"):
        load_config(None, ["data.max_prompt_tokens=1024", "rl.max_new_tokens=512", "reward.max_length=1024"])
    cfg = load_config(ROOT / "configs" / "paper" / "r2m_qwen2.5-3b_ultrafeedback_rloo.yaml")
    assert cfg.reward.max_length >= cfg.data.max_prompt_tokens + cfg.rl.max_new_tokens
    assert cfg.sft.max_length >= cfg.data.max_prompt_tokens + cfg.data.max_response_tokens


ROOT = Path(__file__).resolve().parents[1]


def test_budget_over_the_policy_positions_is_refused(world_artifacts) -> None:
    from r2m.models.loading import load_policy
    from r2m.models.reward import check_positions

    policy = load_policy(str(world_artifacts[0]))  # the world's policy: 64 positions
    check_positions(policy, 64, "p")
    with pytest.raises(ModelError, match=r"data.max_prompt_tokens \+ rl.max_new_tokens: policy p accepts 64 positions"):
        check_positions(policy, 65, "p")


def _user_policy(world_artifacts, tmp_path) -> Path:
    """The world's policy copied outside the world cache: a user's model as far as r2m can tell."""
    return Path(shutil.copytree(world_artifacts[0], tmp_path / "my-policy"))


def test_a_users_policy_without_prompts_is_refused(tiny, world_artifacts, tmp_path, capsys) -> None:
    policy = _user_policy(world_artifacts, tmp_path)
    assert main(["rl", *tiny, "run.name=silent-world", f"policy.path={policy}",
                 f"reward.path={world_artifacts[1]}"]) == 2
    err = capsys.readouterr().err
    assert "data.prompts: must be set when a model is a user's (policy.path=" in err, err
    assert "gold-reward world's toy data" in err


def test_a_users_policy_without_a_reward_model_is_refused(tiny, world_artifacts, world_data_args, tmp_path,
                                                          capsys) -> None:
    policy = _user_policy(world_artifacts, tmp_path)
    assert main(["rl", *tiny, "run.name=silent-rm", f"policy.path={policy}",
                 *world_data_args("prompts", "eval_prompts")]) == 2
    assert "reward.path: must be set when the policy is a user's" in capsys.readouterr().err


def test_each_stage_asks_for_its_own_data(tiny, world_artifacts, tmp_path, capsys) -> None:
    """`r2m eval rm` with a user's RM needs data.pref_eval; R2M needs it too (Table 3); `r2m sft` needs data.sft."""
    rm = Path(shutil.copytree(world_artifacts[1], tmp_path / "my-rm"))
    assert main(["eval", "rm", *tiny, f"reward.path={rm}"]) == 2
    assert "data.pref_eval: must be set" in capsys.readouterr().err
    policy = _user_policy(world_artifacts, tmp_path)
    assert main(["sft", *tiny, "run.name=silent-sft", f"policy.path={policy}"]) == 2
    assert "data.sft: must be set" in capsys.readouterr().err
    files = world_artifacts[2]
    assert main(["rl", *tiny, "run.name=silent-r2m", f"policy.path={policy}", f"reward.path={rm}",
                 "reward.r2m.enabled=true", f"data.prompts={files.prompts}",
                 f"data.eval_prompts={files.eval_prompts}"]) == 2
    assert "data.pref_eval: must be set" in capsys.readouterr().err


def test_world_models_by_path_still_use_the_world(tiny, world_artifacts) -> None:
    """Paths into r2m's own world cache are the world's models, not a user's: the world fills the data."""
    from r2m.recipes.pipeline import resolve_inputs, user_models

    cfg = load_config(None, [*tiny, f"policy.path={world_artifacts[0]}", f"reward.path={world_artifacts[1]}"])
    assert user_models(cfg) == []
    assert resolve_inputs(cfg).prompts == str(world_artifacts[2].prompts)


def test_sft_counts_what_it_cuts(tiny, tmp_path) -> None:
    from r2m.updates.sft import count_truncated
    from r2m.world.tokenizer import build_tokenizer

    tok = build_tokenizer("policy")
    rows = [{"prompt": "<bos> 1 2 =>", "response": " 1 2 <eos>"}, {"prompt": "<bos> 1 =>", "response": " 1 <eos>"}]
    lengths = [len(tok(r["prompt"])["input_ids"]) + len(tok(r["response"], add_special_tokens=False)["input_ids"])
               for r in rows]
    assert count_truncated(tok, rows, max(lengths) - 1) == 1 and count_truncated(tok, rows, max(lengths)) == 0
    # Through `r2m sft`: the count lands in the metrics (the world's SFT rows are longer than 8 tokens).
    assert main(["sft", *tiny, f"run.root={tmp_path}", "run.name=cut", "sft.max_length=8", "sft.max_steps=1"]) == 0
    last = read_metrics(tmp_path / "cut" / "metrics.jsonl")[-1]
    assert last["data/sft_truncated"] > 0
