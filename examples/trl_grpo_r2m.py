"""GRPO + R2M inside TRL, on the gold-reward world's tiny models (CPU).

    python examples/trl_grpo_r2m.py                      # builds the tiny world first (cached in runs/)
    python examples/trl_grpo_r2m.py POLICY RM PROMPTS OUT  # your own policy, RM and {"prompt": ...} JSONL
"""

import sys

from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from r2m.config import R2MConfig
from r2m.integrations.trl import R2MCallback, R2MReward


def build(policy_path, rm_path, prompts_path, output_dir, steps=3) -> GRPOTrainer:
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    # R2M's reward r(x, y, h): the frozen RM at rm_path, a fusion module and head that read the policy's h
    reward = R2MReward.from_base(rm_path, policy, tokenizer, R2MConfig(enabled=True, lr=1e-3, init="matched"))
    args = GRPOConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=8, num_generations=4,
        max_completion_length=8, learning_rate=1e-4, beta=0.0, save_steps=steps, logging_steps=1,
        report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
    )
    return GRPOTrainer(
        model=policy, reward_funcs=[reward], args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_json(str(prompts_path)).select_columns(["prompt"]),
        callbacks=[R2MCallback(reward)],  # the GREBT update after each step; fusion + head in checkpoint-N/r2m
    )


def tiny_world() -> list[str]:
    """The world's tiny SFT policy, proxy RM and RL prompts, built by r2m's own pipeline (cached)."""
    from r2m.config import load_config
    from r2m.recipes.pipeline import ensure_world_policy, ensure_world_rm, world_data

    cfg = load_config(None, [
        "world.n_sft=1500", "world.n_pref_train=400", "world.n_pref_eval=100", "world.n_rl_prompts=200",
        "policy.arch.hidden_size=32", "policy.arch.num_layers=1", "policy.arch.num_heads=2",
        "policy.arch.intermediate_size=64", "reward.arch.hidden_size=24", "reward.arch.num_layers=1",
        "reward.arch.num_heads=2", "reward.arch.intermediate_size=48", "sft.batch_size=32", "rm.batch_size=32",
        "rm.epochs=1", "run.progress=false",
    ])
    return [str(ensure_world_policy(cfg)), str(ensure_world_rm(cfg)), str(world_data(cfg).prompts), "runs/trl-grpo-r2m"]


if __name__ == "__main__":
    trainer = build(*(sys.argv[1:5] if len(sys.argv) > 4 else tiny_world()))
    trainer.train()
    print({k: v for k, v in trainer.state.log_history[-2].items() if k.startswith(("r2m/", "reward"))})
