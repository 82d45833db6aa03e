"""GRPO + R2M from Python (r2m.RLTrainer), on the gold-reward world's tiny models (CPU, seconds).

    python examples/python_rl_r2m.py                                  # builds the tiny world first (cached in runs/)
    python examples/python_rl_r2m.py POLICY RM PROMPTS EVAL_PROMPTS PAIRS OUT  # your models, prompts, held-out pairs
"""

import sys

from datasets import Dataset

import r2m


class Recorder(r2m.TrainerCallback):
    """Keeps each step's metrics; returning True from a hook would stop the run after that step."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, step, metrics):
        self.steps.append({"step": step, **metrics})


def train(policy_path, rm_path, prompts_path, eval_prompts_path, pairs_path, output_dir, steps=2):
    args = r2m.RLArguments(
        output_dir=output_dir, algorithm="grpo", r2m=True, max_steps=steps, num_generations=2,
        max_completion_length=8, learning_rate=1e-4, seed=0, report_to="none",
        overrides={"rl.prompts_per_step": 4, "rl.eval_every": steps, "eval.samples_per_prompt": 1,
                   "run.progress": False, "reward.r2m.lr": 1e-3},
    )
    recorder = Recorder()
    trainer = r2m.RLTrainer(
        model=policy_path, reward_funcs=rm_path, args=args,
        train_dataset=Dataset.from_json(prompts_path), eval_dataset=eval_prompts_path,  # a Dataset or a path
        rm_eval_dataset=pairs_path, callbacks=[recorder],  # pairs_path: held-out pairs for the RM's accuracy
    )
    trainer.train()  # transformers' TrainOutput; trainer.result: r2m's RLResult, trainer.model: the trained policy
    return trainer.result, recorder


def tiny_world() -> list[str]:
    """The world's tiny SFT policy, proxy RM and prompt files, built by r2m's own pipeline (cached)."""
    from r2m.config.parsing import load_config
    from r2m.recipes.pipeline import ensure_world_policy, ensure_world_rm, world_data

    cfg = load_config(None, [
        "world.n_sft=1500", "world.n_pref_train=400", "world.n_pref_eval=100", "world.n_rl_prompts=200",
        "world.n_eval_prompts=16", "world.n_pref_policy=100",
        "policy.arch.hidden_size=32", "policy.arch.num_layers=1", "policy.arch.num_heads=2",
        "policy.arch.intermediate_size=64", "reward.arch.hidden_size=24", "reward.arch.num_layers=1",
        "reward.arch.num_heads=2", "reward.arch.intermediate_size=48", "sft.batch_size=32", "rm.batch_size=32",
        "rm.epochs=1", "run.progress=false",
    ])
    files = world_data(cfg)
    return [str(ensure_world_policy(cfg)), str(ensure_world_rm(cfg)), str(files.prompts), str(files.eval_prompts),
            str(files.pref_eval), "runs/python-grpo-r2m"]


if __name__ == "__main__":
    result, recorder = train(*(sys.argv[1:7] if len(sys.argv) > 6 else tiny_world()))
    assert [row["step"] for row in recorder.steps] == [1, 2]
    print({k: v for k, v in recorder.steps[-1].items() if k.startswith(("r2m/", "reward/"))})
    print("run directory:", result.run_dir, "final eval:", result.final_eval)
