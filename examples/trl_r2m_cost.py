"""What R2M's extra forward pass costs inside TRL, against r2m's own loop, on the same models (FLOPs, seconds).

    python examples/trl_r2m_cost.py [POLICY RM PROMPTS]   # default: the gold-reward world's tiny models (cached)

r2m's loop takes h from the log-prob forward it runs anyway; inside TRL, R2MReward runs one more
no-grad forward of the policy over prompt + completion. Both loops run 3 steps of 8 sequences
(2 prompts × 4 samples, at most 8 new tokens, one epoch, one minibatch; GRPO in both) under
``torch.utils.flop_counter.FlopCounterMode``; the script prints, per step, the FLOPs of the whole
step and of the extra forward. FLOPs are the same on any machine. The script then runs both loops
again for TIME_STEPS steps without the counter and reports wall seconds per step the same way (the
first step included); on models this small wall time is mostly Python overhead rather than the
forward pass, so time it on a quiet machine and read it beside the FLOPs.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

STEPS, PROMPTS, K, NEW_TOKENS = 3, 2, 4, 8
TIME_STEPS = 20
"""Steps of the timed pass (the policy of the tiny world has 200 prompts: 20 steps x 2 prompts fit)."""


class Wall:
    """FlopCounterMode's interface, measuring seconds instead of FLOPs."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.total = time.perf_counter() - self.t0

    def get_total_flops(self) -> float:
        return self.total


def flops() -> FlopCounterMode:
    return FlopCounterMode(display=False)


def tiny_world() -> list[str]:
    """The world's tiny SFT policy, proxy RM and RL prompts, built by r2m's own pipeline (cached in runs/)."""
    from r2m.config.parsing import load_config
    from r2m.recipes.pipeline import ensure_world_policy, ensure_world_rm, world_data

    cfg = load_config(None, [
        "world.n_sft=1500", "world.n_pref_train=400", "world.n_pref_eval=100", "world.n_rl_prompts=200",
        "policy.arch.hidden_size=32", "policy.arch.num_layers=1", "policy.arch.num_heads=2",
        "policy.arch.intermediate_size=64", "reward.arch.hidden_size=24", "reward.arch.num_layers=1",
        "reward.arch.num_heads=2", "reward.arch.intermediate_size=48", "sft.batch_size=32", "rm.batch_size=32",
        "rm.epochs=1", "run.progress=false",
    ])
    return [str(ensure_world_policy(cfg)), str(ensure_world_rm(cfg)), str(world_data(cfg).prompts)]


def build(policy_path: str, rm_path: str, prompts_path: str, output_dir: str, steps: int):
    """TRL's GRPOTrainer with R2M on the world's models and {"prompt": ...} JSONL: PROMPTS × K completions a step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from r2m.config.models import R2MConfig
    from r2m.integrations.trl import R2MCallback, R2MReward

    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    reward = R2MReward.from_base(rm_path, policy, tokenizer, R2MConfig(enabled=True, lr=1e-3, init="matched"))
    args = GRPOConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=PROMPTS * K, num_generations=K,
        max_completion_length=NEW_TOKENS, learning_rate=1e-4, beta=0.0, save_strategy="no", logging_steps=1,
        report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
    )
    return GRPOTrainer(model=policy, reward_funcs=[reward], args=args, processing_class=tokenizer,
                       train_dataset=Dataset.from_json(str(prompts_path)).select_columns(["prompt"]),
                       callbacks=[R2MCallback(reward)])


def trl_cost(policy_path: str, rm_path: str, prompts_path: str, meter=flops, steps: int = STEPS) -> dict[str, float]:
    """TRL GRPO + R2M: the whole step and the extra forward, per step, in the meter's unit."""
    with tempfile.TemporaryDirectory() as out:
        trainer = build(policy_path, rm_path, prompts_path, out, steps)
        reward = trainer.reward_funcs[0]
        extra, feedback = [], reward.feedback

        def counted(sequences):
            with meter() as fc:
                result = feedback(sequences)
            extra.append(fc.get_total_flops())
            return result

        reward.feedback = counted
        with meter() as total:
            trainer.train()
    return {"step": total.get_total_flops() / steps, "extra_forward": sum(extra) / steps}


def r2m_loop_cost(policy_path: str, rm_path: str, prompts_path: str, meter=flops,
                  steps: int = STEPS) -> dict[str, float]:
    """r2m's own loop (GRPO + R2M) on the same models and work: the whole step, per step."""
    from accelerate import Accelerator

    from r2m.config.enums import Algorithm
    from r2m.config.models import R2MConfig
    from r2m.config.training import RLConfig
    from r2m.data.jsonl import read_jsonl
    from r2m.integrations.trl import R2MReward
    from r2m.models.loading import load_policy, load_tokenizer
    from r2m.experience.rollout import ExperienceMaker
    from r2m.experience.sampling import tokenize_prompts
    from r2m.updates.policy import PolicyUpdater
    from r2m.updates.grebt import GREBTUpdater

    torch.manual_seed(0)
    policy, tok = load_policy(policy_path), load_tokenizer(policy_path)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    cfg = R2MConfig(enabled=True, lr=1e-3, init="matched")
    reward = R2MReward.from_base(rm_path, policy, tok, cfg).reward  # the same FeedbackReward R2MReward wraps
    reward.schedule.total_steps = steps
    rl = RLConfig(algorithm=Algorithm.GRPO, prompts_per_step=PROMPTS, k=K, max_new_tokens=NEW_TOKENS, minibatches=1,
                  epochs=1, lr=1e-4)
    maker = ExperienceMaker(policy, ref, tok, reward, rl, torch.device("cpu"))
    updater = PolicyUpdater(policy, torch.optim.AdamW(policy.parameters(), lr=1e-4), Accelerator(cpu=True), rl)
    rm_updater = GREBTUpdater(reward.model, reward.schedule, cfg)
    rows = read_jsonl(prompts_path, ["prompt"])
    with meter() as total:
        for step in range(steps):
            texts = [r["prompt"] for r in rows[step * PROMPTS: (step + 1) * PROMPTS]]
            prompts = tokenize_prompts(tok, texts, 64, "truncate")
            rollout = maker.rollout(prompts.texts, prompts.ids, step)
            if reward.calibrates(rollout.query):  # init=matched: W_o scaled once, on the first batch
                rollout = rollout._replace(query=reward.calibrate(rollout.query))
            exp = maker.estimate(rollout, maker.score(rollout))
            refreshed = updater.update(exp, keep_states=rm_updater.keep_states).states  # h from the last policy epoch
            rm_updater.update(exp, refreshed)
    return {"step": total.get_total_flops() / steps, "extra_forward": 0.0}


def main(argv: list[str]) -> dict:
    policy_path, rm_path, prompts_path = argv[:3] if len(argv) >= 3 else tiny_world()[:3]
    trl, own = trl_cost(policy_path, rm_path, prompts_path), r2m_loop_cost(policy_path, rm_path, prompts_path)
    report = {
        "trl_step_flops": trl["step"], "trl_extra_forward_flops": trl["extra_forward"], "r2m_loop_step_flops": own["step"],
        "extra_forward_share_of_trl_step": trl["extra_forward"] / trl["step"],
        "extra_forward_vs_r2m_loop_step": trl["extra_forward"] / own["step"],
    }
    t_trl = trl_cost(policy_path, rm_path, prompts_path, Wall, TIME_STEPS)
    t_own = r2m_loop_cost(policy_path, rm_path, prompts_path, Wall, TIME_STEPS)
    report.update({
        "time_steps": TIME_STEPS, "torch_threads": torch.get_num_threads(),
        "trl_step_s": t_trl["step"], "trl_extra_forward_s": t_trl["extra_forward"], "r2m_loop_step_s": t_own["step"],
        "extra_forward_share_of_trl_step_time": t_trl["extra_forward"] / t_trl["step"],
        "extra_forward_time_vs_r2m_loop_step": t_trl["extra_forward"] / t_own["step"],
    })
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
