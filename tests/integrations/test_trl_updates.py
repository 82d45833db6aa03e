"""R2MCallback's update inside TRL: it reads only training generation batches, each once, at the step that first
trains on it; never an evaluation batch, also when a step reuses a buffered generation batch; two batches scored
in one step are one update. A run whose R2M could not be saved, or pushed where it would load, is refused first."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'r2m[trl]'): the TRL integration tests skip")

from r2m.config.models import R2MConfig  # noqa: E402
from r2m.integrations.trl import R2MCallback, R2MReward  # noqa: E402
from r2m.updates.grebt import GREBTUpdater  # noqa: E402


def grpo(models, out, train, eval_prompts=None, **overrides):
    """A GRPOTrainer with R2M on the tiny Qwen policy and Llama RM: 4 completions per device step, groups of 2."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(str(models.policy))
    tok = AutoTokenizer.from_pretrained(str(models.policy))
    reward = R2MReward.from_base(str(models.rm), policy, tok, R2MConfig(enabled=True, lr=1e-3))
    args = dict(output_dir=str(out), per_device_train_batch_size=4, num_generations=2, max_completion_length=6,
                learning_rate=1e-4, beta=0.0, save_strategy="no", logging_steps=1, report_to=[], use_cpu=True,
                bf16=False, gradient_checkpointing=False, seed=0, per_device_eval_batch_size=4)
    if eval_prompts is not None:
        args.update(eval_strategy="steps", eval_steps=1)
    callback = R2MCallback(reward)
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=GRPOConfig(**{**args, **overrides}),
                          processing_class=tok, callbacks=[callback], train_dataset=Dataset.from_dict({"prompt": train}),
                          eval_dataset=None if eval_prompts is None else Dataset.from_dict({"prompt": eval_prompts}))
    return SimpleNamespace(trainer=trainer, reward=reward, callback=callback)


@pytest.fixture
def spy(monkeypatch):
    """Every GREBT update's groups (their prompts) and every prompt the reward scored."""
    seen = SimpleNamespace(updates=[], scored=[])
    update = GREBTUpdater.update

    def record(self, batch, hidden):
        seen.updates.append(list(batch.prompts))
        return update(self, batch, hidden)

    monkeypatch.setattr(GREBTUpdater, "update", record)
    call = R2MReward.__call__

    def scored(self, prompts, completions, **kw):
        seen.scored.extend(prompts)
        return call(self, prompts, completions, **kw)

    monkeypatch.setattr(R2MReward, "__call__", scored)
    return seen


def text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


@pytest.mark.parametrize("reuse", [dict(steps_per_generation=2), dict(num_iterations=2)],
                         ids=["steps_per_generation=2", "num_iterations=2"])
def test_evaluation_batches_never_reach_the_update(family_models, prompts, tmp_path, spy, reuse) -> None:
    train, evals = prompts.texts(8), prompts.texts(4, prefix="EVAL ")
    run = grpo(family_models, tmp_path, train, evals, max_steps=2, **reuse)
    run.trainer.train()
    assert any(p.startswith("EVAL") for p in spy.scored)  # evaluation did call the reward
    # one generation batch (2 steps of 4 completions, or 4 completions twice), so one update, after step 1
    assert [h["step"] for h in run.callback.history] == [1]
    assert all(math.isfinite(h["r2m/grebt"]) for h in run.callback.history)
    used = [p for groups in spy.updates for p in groups]
    assert used and not any(p.startswith("EVAL") for p in used), used
    assert set(used) <= set(train)
    assert run.reward.pending == []


def test_two_generation_batches_in_one_step_are_both_updated_once(family_models, prompts, tmp_path, spy) -> None:
    """gradient_accumulation_steps=2 with steps_per_generation=1: each optimiser step scores two generation
    batches; the step's update reads the groups of both, once."""
    train = prompts.texts(16)
    run = grpo(family_models, tmp_path, train, max_steps=2, gradient_accumulation_steps=2, steps_per_generation=1)
    run.trainer.train()
    assert [h["step"] for h in run.callback.history] == [1, 2]
    assert [len(groups) for groups in spy.updates] == [4, 4]  # 2 batches x 2 groups of 2 completions
    assert [len(set(groups)) for groups in spy.updates] == [4, 4]
    scored_groups = spy.scored[::2]
    assert [p for groups in spy.updates for p in groups] == scored_groups  # every scored group, once, in order


def _bound_reward(models, **cfg):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(str(models.policy))
    tok = AutoTokenizer.from_pretrained(str(models.policy))
    reward = R2MReward.from_base(str(models.rm), policy, tok, R2MConfig(enabled=True, **cfg))
    reward.bind(policy, 2)
    return policy, reward


def test_only_a_call_inside_a_training_step_keeps_its_groups(family_models, prompts) -> None:
    """Outside a step (evaluation between steps, a direct call) or with the policy in eval mode (TRL's test for
    evaluation), a call scores without keeping its groups and without init=matched's calibration."""
    policy, reward = _bound_reward(family_models, init="matched")
    rows = [p for p in prompts.texts(2) for _ in range(2)]
    policy.train()
    reward(rows, ["a", "b", "c", "d"])  # between steps
    reward.in_step = True
    policy.eval()
    reward(rows, ["a", "b", "c", "d"])  # inside a step, but the policy is evaluating
    assert reward.pending == [] and not bool(reward.model.fusion.calibrated)
    policy.train()
    reward(rows, ["a", "b", "c", "d"])
    assert [b.prompts for b in reward.pending] == [rows[::2]] and bool(reward.model.fusion.calibrated)


def test_an_r2m_that_could_not_be_saved_or_pushed_is_refused_before_any_step(family_models) -> None:
    from r2m.errors import ConfigError

    policy, reward = _bound_reward(family_models)
    args = SimpleNamespace(num_generations=2, per_device_train_batch_size=4, steps_per_generation=1, push_to_hub=True)
    state = SimpleNamespace(global_step=0)
    with pytest.raises(ConfigError, match="push_to_hub would upload an R2M whose base RM is the local path"):
        R2MCallback(reward).on_train_begin(args, state, None, model=policy)
    R2MCallback(reward, base_rm="me/tiny-rm").on_train_begin(args, state, None, model=policy)  # on the Hub
    R2MCallback(reward, include_base=True).on_train_begin(args, state, None, model=policy)  # uploaded with it
    reward.model.base_rm = None  # built from a model in memory: nothing to name
    with pytest.raises(ConfigError, match="base RM of this R2M was not loaded from a path"):
        R2MCallback(reward).on_train_begin(SimpleNamespace(**{**vars(args), "push_to_hub": False}), state, None,
                                           model=policy)


def test_tool_calling_runs_are_refused(family_models, prompts) -> None:
    from r2m.errors import ConfigError

    policy, reward = _bound_reward(family_models)
    trainer = SimpleNamespace(tools=[len])
    log_metric = SimpleNamespace(__self__=trainer)  # TRL's bound _log_metric: its __self__ is the trainer
    with pytest.raises(ConfigError, match="the trainer uses tools or environments"):
        reward(prompts.texts(1) * 2, ["a", "b"], log_metric=log_metric)
    with pytest.raises(ConfigError, match="tool-calling runs are not supported"):
        reward(prompts.texts(1) * 2, ["a", "b"], environments=[object(), object()])
