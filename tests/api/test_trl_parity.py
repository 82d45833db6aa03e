"""r2m's trainers take what TRL's take: a GRPOConfig / RewardConfig, reward_funcs (reward models and keyword-called
callables, weighted), transformers TrainerCallbacks, peft_config, resume_from_checkpoint; the policy object is
trained in place; a saved R2M whose RM came in as an object loads after the trainer is gone."""

from __future__ import annotations

import gc
import math
import shutil
from pathlib import Path

import pytest
import torch

import r2m
from r2m.errors import ConfigError

pytest.importorskip("trl", reason="TRL is the trl extra (pip install -e '.[trl]')")


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _lm(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


class Events:
    """A transformers TrainerCallback recording its events; stops at ``stop_at``."""

    def __new__(cls, stop_at=None):
        from transformers import TrainerCallback

        class Recorder(TrainerCallback):
            def __init__(self):
                self.events, self.args, self.steps = [], None, []

            def _note(self, name, args, state, control):
                self.events.append(name)
                self.args = args

            def on_train_begin(self, args, state, control, **kw):
                self._note("train_begin", args, state, control)
                assert kw["model"] is not None

            def on_step_begin(self, args, state, control, **kw):
                self._note("step_begin", args, state, control)

            def on_log(self, args, state, control, logs=None, **kw):
                self._note("log", args, state, control)
                assert "loss/policy" in logs or "rm/loss" in logs, sorted(logs)

            def on_step_end(self, args, state, control, **kw):
                self._note("step_end", args, state, control)
                self.steps.append(state.global_step)
                if state.global_step == stop_at:
                    control.should_training_stop = True

            def on_save(self, args, state, control, **kw):
                self._note("save", args, state, control)

            def on_evaluate(self, args, state, control, metrics=None, **kw):
                self._note("evaluate", args, state, control)

            def on_train_end(self, args, state, control, **kw):
                self._note("train_end", args, state, control)

        return Recorder()


def test_grpo_config_weighted_callables_and_a_transformers_callback(world_artifacts, tmp_path) -> None:
    """args=GRPOConfig (an AttributeError before), TRL-style rewards by keyword, reward_weights, on_* events,
    should_training_stop, TrainOutput, trainer.state, and the policy object trained in place."""
    from datasets import Dataset
    from trl import GRPOConfig

    policy_dir, _, files = world_artifacts
    policy, seen = _lm(policy_dir), []
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}

    def constant(completions, **kwargs):  # TRL's convention: keywords, **kwargs
        seen.append(sorted(kwargs))
        return [0.7] * len(completions)

    def first_is_even(completion_ids, **kwargs):
        return [1.0 if ids and ids[0] % 2 == 0 else 0.0 for ids in completion_ids]

    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), use_cpu=True, bf16=False, max_steps=3,
                      per_device_train_batch_size=4, num_generations=2, max_completion_length=8, learning_rate=1e-3,
                      reward_weights=[1.0, 0.5], report_to="none", disable_tqdm=True, gradient_checkpointing=False)
    cb = Events(stop_at=2)
    trainer = r2m.RLTrainer(policy, [constant, first_is_even], args=args, processing_class=_tok(policy_dir),
                            train_dataset=Dataset.from_json(str(files.prompts)), callbacks=[cb])
    assert (trainer.cfg.rl.prompts_per_step, trainer.cfg.rl.k, trainer.cfg.rl.steps) == (2, 2, 3)
    assert (trainer.cfg.rl.kl_mode.value, trainer.cfg.rl.algorithm.value) == ("loss", "grpo")
    output = trainer.train()
    assert cb.events[0] == "train_begin" and cb.events[-1] == "train_end" and cb.args is args
    assert cb.events[1:4] == ["step_begin", "log", "step_end"] and cb.steps == [1, 2]  # stopped after step 2
    assert output.global_step == 2 and math.isfinite(output.training_loss)
    assert trainer.state.global_step == 2 and [r["step"] for r in trainer.state.log_history] == [1, 2]
    assert seen[0] == ["completion_ids", "prompts"]
    for row in trainer.result.history:  # the weighted sum: 0.7 + 0.5 x (share of completions starting even)
        assert 0.7 - 1e-6 <= row["reward"] <= 1.2 + 1e-6 and "eval/proxy" not in row  # no eval_dataset: none
    assert trainer.model is policy  # trained in place
    assert any(not torch.equal(before[n], p) for n, p in policy.named_parameters())


def test_rm_object_r2m_loads_after_the_trainer_is_gone(world_artifacts, tmp_path) -> None:
    """The RM passed as an object was saved to a temporary directory, which the saved R2M named and which was
    deleted with the trainer; it lives in the run's inputs/ now, and the run directory moves whole."""
    from transformers import AutoModelForSequenceClassification

    from r2m.models.r2m import FeedbackRewardModel

    policy_dir, rm_dir, files = world_artifacts
    args = r2m.RLArguments(output_dir=str(tmp_path / "runs" / "obj"), r2m=True, algorithm="grpo", max_steps=1,
                           num_generations=2, max_completion_length=8, report_to="none", prompts_per_step=2,
                           overrides={"run.progress": False, "rl.minibatches": 1})
    trainer = r2m.RLTrainer(str(policy_dir), AutoModelForSequenceClassification.from_pretrained(rm_dir), args=args,
                            reward_processing_classes=_tok(rm_dir), train_dataset=str(files.prompts),
                            rm_eval_dataset=str(files.pref_eval))
    trainer.train()
    r2m_dir = Path(trainer.result.run_dir) / "checkpoints" / "final" / "r2m"
    del trainer
    gc.collect()
    assert FeedbackRewardModel.from_pretrained(r2m_dir).fusion is not None
    moved = Path(shutil.move(str(tmp_path / "runs"), str(tmp_path / "elsewhere")))
    assert FeedbackRewardModel.from_pretrained(moved / "obj" / "checkpoints" / "final" / "r2m").fusion is not None


def test_resume_from_checkpoint(world_artifacts, tmp_path) -> None:
    policy_dir, _, files = world_artifacts

    def trainer(steps: int, callbacks=()):
        args = r2m.RLArguments(output_dir=str(tmp_path / "res"), max_steps=steps, num_generations=2,
                               max_completion_length=8, report_to="none", prompts_per_step=2, save_steps=1,
                               overrides={"run.progress": False, "rl.minibatches": 1})
        return r2m.RLTrainer(_lm(policy_dir), lambda completions, **kw: [0.3] * len(completions), args=args,
                             processing_class=_tok(policy_dir), train_dataset=str(files.prompts),
                             callbacks=list(callbacks))

    class StopAtOne(r2m.TrainerCallback):
        def on_step_end(self, step, metrics):
            return step == 1  # stops with a checkpoint of step 1

    first = trainer(2, [StopAtOne()])
    with pytest.raises(ConfigError, match="resume_from_checkpoint: no checkpoint in"):
        first.train(resume_from_checkpoint=True)
    first.train()
    again = trainer(2)
    with pytest.raises(ConfigError, match="r2m resumes from the run's latest checkpoint"):
        again.train(resume_from_checkpoint=str(tmp_path / "elsewhere"))
    output = again.train(resume_from_checkpoint=True)  # the same inputs/ paths: the checkpoint's config matches
    assert output.global_step == 2 and [r["step"] for r in again.result.history] == [1, 2]


def test_peft_config_and_unsupported_trl_arguments(world_artifacts, tmp_path) -> None:
    from peft import LoraConfig
    from trl import GRPOConfig, RewardConfig

    lora = r2m.RLTrainer(None, None, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
                         args=r2m.RLArguments(output_dir=str(tmp_path / "l"))).cfg.policy.lora
    assert (lora.enabled, lora.r, lora.alpha, lora.target_modules) == (True, 4, 8, ("q_proj", "v_proj"))
    with pytest.raises(ConfigError, match="set to other than peft's defaults: use_dora"):
        r2m.RLTrainer(None, None, peft_config=LoraConfig(use_dora=True))
    with pytest.raises(ConfigError, match=r"optimizers=.*r2m builds its AdamW"):
        r2m.RLTrainer(None, None, optimizers=(object(), None))
    with pytest.raises(ConfigError, match="tools=.*single-turn generation only"):
        r2m.RLTrainer(None, None, tools=[print])
    with pytest.raises(ConfigError, match="args: a GRPOConfig configures another trainer"):
        r2m.RMTrainer(args=GRPOConfig(output_dir="x", use_cpu=True, bf16=False))
    with pytest.raises(ConfigError, match="args: a RewardConfig configures another trainer"):
        r2m.RLTrainer(args=RewardConfig(output_dir="x", use_cpu=True, bf16=False))


def test_reward_config_trains_the_model_object_in_place(tiny, world_artifacts, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig

    _, rm_dir, files = world_artifacts
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    head = model.score.weight.detach().clone()
    args = RewardConfig(output_dir=str(tmp_path / "rw"), use_cpu=True, bf16=False, max_steps=2,
                        per_device_train_batch_size=8, learning_rate=1e-2, report_to="none", save_strategy="no",
                        lr_scheduler_type="cosine", disable_tqdm=True)
    cb = Events()
    trainer = r2m.RMTrainer(model, args=args, processing_class=_tok(rm_dir), train_dataset=str(files.pref_train),
                            eval_dataset=str(files.pref_eval), callbacks=[cb])
    assert (trainer.cfg.rm.batch_size, trainer.cfg.rm.max_steps, trainer.cfg.reward.max_length) == (8, 2, 1024)
    output = trainer.train()
    assert output.global_step == 2 and math.isfinite(output.training_loss) and "eval_accuracy" in output.metrics
    assert cb.steps == [1, 2] and cb.events[-1] == "train_end" and "evaluate" in cb.events
    assert trainer.model is model and not torch.equal(head, model.score.weight)
    # no eval_dataset: no held-out accuracy, as TRL without one
    again = r2m.RMTrainer(str(rm_dir), args=args, train_dataset=str(files.pref_train),
                          overrides={"run.name": "rw-no-eval"}).train()
    assert again.global_step == 2 and "eval_accuracy" not in again.metrics


def test_num_train_epochs_counts_passes_over_the_prompts(world_artifacts, tmp_path) -> None:
    """max_steps=-1 (TRL's default): num_train_epochs passes over the training prompts; a warmup_steps below 1 is a
    ratio of those steps (transformers 5)."""
    from datasets import Dataset
    from trl import GRPOConfig

    policy_dir, _, files = world_artifacts
    args = GRPOConfig(output_dir=str(tmp_path / "ep"), use_cpu=True, bf16=False, num_train_epochs=2,
                      per_device_train_batch_size=4, num_generations=2, warmup_steps=0.5, max_completion_length=8)
    trainer = r2m.RLTrainer(str(policy_dir), lambda completions, **kw: [0.0] * len(completions), args=args,
                            train_dataset=Dataset.from_json(str(files.prompts)).select(range(7)))
    assert (trainer.cfg.rl.steps, trainer.cfg.rl.warmup_steps) == (7, 4)  # ceil(2 x 7 / 2); ceil(0.5 x 7)
