"""GRPO inside TRL with R2M as the reward: a conversational dataset, LoRA on the policy, and R2M's GREBT update
of the reward model's fusion module and head after every optimiser step.

    python examples/trl_grpo_r2m.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --reward_model_name_or_path Skywork/Skywork-Reward-V2-Llama-3.1-8B --reward_model_dtype bfloat16 \
        --dataset_name trl-lib/ultrafeedback-prompt --use_peft --output_dir Qwen2.5-0.5B-GRPO-R2M
    python examples/trl_grpo_r2m.py --config examples/trl_grpo_r2m_tiny.yaml    # CPU, seconds, nothing downloaded

``--tiny`` builds a random Qwen2.5 policy and Llama 3 reward model from configs (their families' tokenizers and
chat templates: the RM reads each conversation through its own template) and a small conversational dataset.
``trainer.save_model()`` writes the policy (its LoRA adapter) and the trained R2M in ``output_dir/r2m``, which
``trainer.push_to_hub()`` uploads too; load it with ``FeedbackRewardModel.from_pretrained(output_dir, subfolder="r2m")``.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from datasets import Dataset, DatasetDict, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from r2m.config.models import R2MConfig
from r2m.integrations.trl import R2MCallback, R2MReward


@dataclass
class R2MScriptArguments(ScriptArguments):
    reward_model_name_or_path: Optional[str] = field(default=None, metadata={"help": "The base reward model."})
    reward_model_dtype: str = field(default="float32", metadata={"help": "The frozen RM backbone's dtype."})
    r2m_lr: float = field(default=1e-3, metadata={"help": "Learning rate of R2M's fusion module and head."})
    tiny: bool = field(default=False, metadata={"help": "Tiny random models and prompts built here (no download)."})


def tiny_models_and_data(script_args, model_args, output_dir) -> DatasetDict:
    """A tiny Qwen2.5 policy and Llama 3 RM (under output_dir/tiny-models) and 40 conversational prompts."""
    from r2m.models.families import Family, save_family_model

    root = Path(output_dir) / "tiny-models"
    model_args.model_name_or_path = str(save_family_model(Family.QWEN2_5, root / "policy", seed=0))
    script_args.reward_model_name_or_path = str(save_family_model(Family.LLAMA3, root / "rm", rm=True, seed=1))
    topics = ["the sea", "bread", "the sky", "Paris", "a fox", "a poem", "the capital of France", "yeast"]
    prompts = [[{"role": "user", "content": f"Write {i + 1} short lines about {t}."}]
               for i in range(5) for t in topics]
    return DatasetDict(train=Dataset.from_dict({"prompt": prompts[:32]}),
                       test=Dataset.from_dict({"prompt": prompts[32:]}))


def build(script_args, training_args, model_args) -> GRPOTrainer:
    if script_args.tiny:
        dataset = tiny_models_and_data(script_args, model_args, training_args.output_dir)
    else:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    policy = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=model_args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    # R2M's reward r(x, y, h): the frozen base RM, plus a fusion module and head that read the policy's hidden states
    reward = R2MReward.from_base(script_args.reward_model_name_or_path, policy, tokenizer,
                                 R2MConfig(enabled=True, lr=script_args.r2m_lr, init="matched"),
                                 dtype=script_args.reward_model_dtype)
    return GRPOTrainer(
        model=policy, reward_funcs=[reward], args=training_args, processing_class=tokenizer,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        peft_config=get_peft_config(model_args),
        callbacks=[R2MCallback(reward)],  # the GREBT update after each step; R2M saved with checkpoints and the model
    )


def main(script_args, training_args, model_args) -> GRPOTrainer:
    trainer = build(script_args, training_args, model_args)
    trainer.train()
    trainer.save_model()  # the policy (its LoRA adapter) and, in output_dir/r2m, the trained R2M
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


if __name__ == "__main__":
    parser = TrlParser((R2MScriptArguments, GRPOConfig, ModelConfig))
    trainer = main(*parser.parse_args_and_config())
    updates = [row for row in trainer.state.log_history if "r2m/grebt" in row]  # the steps that updated the RM
    print({"r2m_updates_at_steps": [row["step"] for row in updates],
           **{k: v for k, v in updates[-1].items() if k.startswith(("r2m/", "reward"))}})
