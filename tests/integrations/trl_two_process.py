"""Run by tests/integrations/test_trl.py under ``torchrun --nproc_per_node 2`` (CPU, gloo).

    trl_two_process.py POLICY RM PROMPTS OUT PER_DEVICE_BATCH

2 GRPO + R2M steps with num_generations=4; each rank writes what its R2M copy ended with to
OUT/rank<r>.json, so the test can check the copies stayed identical (gradients averaged).
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from r2m.config.models import R2MConfig
from r2m.integrations.trl import R2MCallback, R2MReward


def main(policy_path: str, rm_path: str, prompts_path: str, out: str, per_device: int) -> None:
    policy = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    torch.manual_seed(PartialState().process_index)  # different fusion inits per rank: the broadcast must unify them
    reward = R2MReward.from_base(rm_path, policy, tokenizer, R2MConfig(enabled=True, lr=1e-2))
    args = GRPOConfig(output_dir=out, max_steps=2, per_device_train_batch_size=per_device, num_generations=4,
                      max_completion_length=6, learning_rate=1e-4, beta=0.0, save_strategy="no", logging_steps=1,
                      report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0)
    callback = R2MCallback(reward)
    GRPOTrainer(model=policy, reward_funcs=[reward], args=args, processing_class=tokenizer, callbacks=[callback],
                train_dataset=Dataset.from_json(prompts_path).select_columns(["prompt"])).train()
    state = reward.model.trainable_state()
    rank = PartialState().process_index
    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "params": {k: v.float().flatten().tolist() for k, v in state.items()},
        "grebt": [h["r2m/grebt"] for h in callback.history],
    }))


if __name__ == "__main__":
    main(*sys.argv[1:5], int(sys.argv[5]))
