"""``r2m eval policy`` and ``r2m eval rm``."""

from __future__ import annotations

from r2m.config.root import Config
from r2m.errors import ConfigError
from r2m.eval.analysis import Checkpoint, run_hidden_state_analysis, world_hacking_labels
from r2m.eval.judges import GoldJudge, JudgeKind, RewardModelJudge, build_judge
from r2m.eval.policy import sample_policy, summarize
from r2m.eval.rm_accuracy import pairwise_accuracy
from r2m.eval.winrate import judge_win_rate, read_paired_responses, win_rate_dict
from r2m.experience.reward_factory import build_reward
from r2m.experience.rewards import GoldReward, is_world_prompt_set
from r2m.experience.sampling import tokenize_prompts
from r2m.models.loading import load_policy, load_tokenizer
from r2m.recipes.pipeline import read_rows, resolve_inputs
from r2m.utils import resolve_device


def eval_policy(cfg: Config) -> dict[str, float]:
    """Sample the policy on the fixed evaluation prompts; gold (world), proxy reward, length, KL to SFT."""

    inputs = resolve_inputs(cfg, need=("eval_prompts",))
    device = resolve_device(cfg.run.device)
    tok = load_tokenizer(inputs.policy, cfg.policy.trust_remote_code)
    policy = load_policy(inputs.policy, cfg.policy.dtype, cfg.policy.trust_remote_code).to(device)
    prompts = tokenize_prompts(tok, read_rows(cfg, "eval_prompts", inputs.eval_prompts, tok),
                               cfg.data.max_prompt_tokens, cfg.data.overlong)
    gold_fn = GoldReward(cfg.world) if is_world_prompt_set(prompts.texts) else None
    reward_fn = build_reward(cfg, inputs.reward_model, device)
    if reward_fn.reward_model is not None:
        reward_fn.reward_model.read_policy(tok)  # chat prompts: the RM's template closes the reply, not the EOS
    samples = sample_policy(policy, tok, prompts.texts, prompts.ids, cfg.eval, cfg.rl.max_new_tokens, device,
                            reward_fn=reward_fn, gold_fn=gold_fn)
    return summarize(samples)


def eval_rm(cfg: Config) -> dict[str, float]:
    """Pairwise accuracy of ``reward.path`` (default: the world's RM) on ``data.pref_eval``."""

    inputs = resolve_inputs(cfg, need_policy=False, need=("pref_eval",))
    if inputs.reward_model is None:
        raise ConfigError("reward.source: `r2m eval rm` needs a reward model (reward.source=model)")
    reward = build_reward(cfg, inputs.reward_model, resolve_device(cfg.run.device))
    acc = pairwise_accuracy(reward.rm, read_rows(cfg, "pref_eval", inputs.pref_eval, reward.rm.tokenizer))
    return {"accuracy": acc.accuracy, "gold_accuracy": acc.gold_accuracy, "n": acc.n}


def _judge(cfg: Config, kind: str):
    if kind == "api":
        # eval.judge.* first, then the R2M_JUDGE_* environment variables (the judge resolves them); the key itself
        # is read by the judge from the environment variable eval.judge.api_key_env names (or the key file).
        return build_judge(JudgeKind.API, api=cfg.eval.judge)
    if kind == "reward_model":
        inputs = resolve_inputs(cfg, need_policy=False, need=())
        rm = build_reward(cfg, inputs.reward_model, resolve_device(cfg.run.device)).rm
        return build_judge(JudgeKind.REWARD_MODEL, reward_model=rm)
    return build_judge(JudgeKind.GOLD, world=cfg.world)


def eval_winrate(cfg: Config, policy_responses: str, ref_responses: str, judge: str) -> dict[str, float]:
    """Win rate (raw and length-controlled) of one set of responses against another, by a judge."""
    if not policy_responses or not ref_responses:
        raise ConfigError("eval winrate: --policy-responses and --ref-responses are both required")
    pairs = read_paired_responses(policy_responses, ref_responses)
    result = judge_win_rate(_judge(cfg, judge), pairs.prompts, pairs.responses, pairs.ref_responses)
    return win_rate_dict(result.summary)


def analyze_hidden_states(cfg: Config, out: str | None, checkpoints: list[str]) -> str:
    """R2M Section 3 / Appendix D analyses on the policy's hidden states; returns the JSON path."""
    from pathlib import Path

    inputs = resolve_inputs(cfg, need=("pref_eval",))
    device = resolve_device(cfg.run.device)
    policy = load_policy(inputs.policy, cfg.policy.dtype, cfg.policy.trust_remote_code).to(device)
    tok = load_tokenizer(inputs.policy, cfg.policy.trust_remote_code)
    scorer = GoldJudge(cfg.world) if inputs.world else RewardModelJudge(build_reward(cfg, inputs.reward_model,
                                                                                      device).rm)
    out_dir = Path(out) if out else Path(cfg.run.root) / cfg.run.name / "analysis"
    ckpts = [Checkpoint(Path(p).name, lambda p=p: load_policy(str(p), cfg.policy.dtype).to(device))
             for p in checkpoints]
    report = run_hidden_state_analysis(policy, tok, read_rows(cfg, "pref_eval", inputs.pref_eval, tok), out_dir,
                                       scorer=scorer,
                                       hacking_labels=world_hacking_labels if inputs.world else None,
                                       checkpoints=ckpts)
    del report  # the numbers are in the JSON next to the plots
    return str(out_dir / "hidden_states.json")
