"""The object API (README "From Python"): examples/python_rl_r2m.py runs GRPO + R2M through r2m.RLTrainer with a
callback; a reward callable replaces the RM; a callback stops the run; objects (model, Dataset) are accepted."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

import r2m
from r2m.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "python_rl_r2m.py"


def _example():
    spec = importlib.util.spec_from_file_location("python_rl_r2m", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_includes_the_example_verbatim() -> None:
    block = re.search(r"## From Python\n.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block is not None, "README.md has no python block in a '## From Python' section"
    assert block.group(1) == EXAMPLE.read_text(), "README's From Python block and examples/python_rl_r2m.py differ"


def test_example_runs_grpo_with_r2m(world_artifacts, tmp_path) -> None:
    policy_dir, rm_dir, files = world_artifacts
    result, recorder = _example().train(str(policy_dir), str(rm_dir), str(files.prompts), str(files.eval_prompts),
                                        str(files.pref_eval), str(tmp_path / "py"))
    assert [row["step"] for row in recorder.steps] == [1, 2]
    assert all(math.isfinite(row["r2m/grebt"]) for row in recorder.steps), sorted(recorder.steps[0])
    assert (Path(result.run_dir) / "checkpoints" / "final" / "r2m").is_dir()  # R2M's fusion + head saved


class StopAfterOne(r2m.TrainerCallback):
    def __init__(self):
        self.calls = []

    def on_evaluate(self, step, metrics):
        self.calls.append(("evaluate", step))

    def on_step_end(self, step, metrics):
        self.calls.append(("step", step))
        return True  # stop after the first step

    def on_save(self, step, path):
        assert Path(path).is_dir()
        self.calls.append(("save", step))


def test_callable_reward_and_stopping_callback(world_artifacts, tmp_path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy_dir, _, files = world_artifacts
    seen = []

    def length_reward(prompts, completions):
        seen.append(len(completions))
        return [0.7 * len(c) for c in completions]

    cb = StopAfterOne()
    args = r2m.RLArguments(output_dir=str(tmp_path / "cb"), max_steps=3, num_generations=2, report_to="none",
                           max_completion_length=10, overrides={"rl.prompts_per_step": 2, "rl.eval_every": 1,
                                                                "eval.samples_per_prompt": 1, "run.progress": False})
    trainer = r2m.RLTrainer(AutoModelForCausalLM.from_pretrained(policy_dir), length_reward, args=args,
                            train_dataset=Dataset.from_json(str(files.prompts)), eval_dataset=str(files.eval_prompts),
                            callbacks=[cb], processing_class=AutoTokenizer.from_pretrained(policy_dir))
    output = trainer.train()
    # stopped after step 1: its checkpoint, then the final model
    assert cb.calls == [("evaluate", 0), ("evaluate", 1), ("step", 1), ("save", 1), ("save", 1)]
    assert seen == [16, 4, 16]  # evaluation (16 prompts), the step (2 prompts x 2 generations), evaluation
    assert trainer.result.history[-1]["step"] == 1 and output.global_step == 1


def test_bad_arguments_are_refused(world_artifacts) -> None:
    with pytest.raises(ConfigError, match="reward.r2m.enabled: R2M needs a reward model"):
        r2m.RLTrainer(None, lambda completions, **kw: [0.0] * len(completions), args=r2m.RLArguments(r2m=True))
    with pytest.raises(ConfigError, match="reward functions are called by keyword"):
        r2m.RLTrainer(None, lambda p, c: [0.0] * len(c))
    with pytest.raises(ConfigError, match="model: expected a path or a transformers model"):
        r2m.RLTrainer(object(), None)
    with pytest.raises(DataError, match="train_dataset"):
        r2m.RLTrainer(None, None, train_dataset=[{"prompt": "x"}])
    with pytest.raises(ConfigError, match="num_train_epoch: not a TRL name"):
        from r2m.config.trl_map import map_trl

        map_trl({"num_train_epoch": 1}, "rl")


def test_rl_arguments_map_trl_names() -> None:
    cfg = r2m.RLArguments(output_dir="runs/a/b", num_generations=3, max_completion_length=7, epsilon=0.3,
                       learning_rate=2e-5, report_to="none", save_steps=5, seed=9, bf16=True, algorithm="grpo",
                       overrides={"rl.beta": 0.07}).to_config()
    assert (cfg.run.root, cfg.run.name, cfg.rl.k, cfg.rl.max_new_tokens, cfg.rl.clip_eps) == ("runs/a", "b", 3, 7, 0.3)
    assert (cfg.rl.lr, cfg.run.log_with, cfg.rl.save_every, cfg.run.seed) == (2e-5, (), 5, 9)
    assert cfg.run.mixed_precision == "bf16" and cfg.rl.algorithm == "grpo" and cfg.rl.beta == 0.07
    rm = r2m.RMArguments(learning_rate=3e-4, save_steps=2, num_train_epochs=4).to_config()
    assert (rm.rm.lr, rm.rm.save_every, rm.rm.epochs) == (3e-4, 2, 4)


def test_trl_aliases_copy_r2m_metrics(world_artifacts, tmp_path) -> None:
    from r2m.recipes.rl.trl_aliases import TRL_ALIASES

    policy_dir, _, files = world_artifacts
    rewards = iter([[0.7, 0.7, 0.1, 0.5]])  # group 1 all equal (zero std), group 2 spread 0.4

    def fixed(prompts, completions):
        return next(rewards, [0.3] * len(completions))

    args = r2m.RLArguments(output_dir=str(tmp_path / "al"), max_steps=1, num_generations=2, report_to="none",
                           max_completion_length=10,
                        overrides={"rl.prompts_per_step": 2, "rl.eval_every": 5, "eval.samples_per_prompt": 1,
                                   "run.progress": False, "rl.lr_schedule": "constant"})
    trainer = r2m.RLTrainer(str(policy_dir), fixed, args=args, train_dataset=str(files.prompts),
                            eval_dataset=str(files.eval_prompts))
    # the evaluation at step 0 takes the first answer: step 1 must see ours, so evaluation comes first here
    rewards = iter([[0.3] * 16, [0.7, 0.7, 0.1, 0.5]])
    trainer.train()
    row = trainer.result.history[1]
    assert row["step"] == 1
    assert all(row[alias] == row[key] for alias, key in TRL_ALIASES.items())
    assert row["frac_reward_zero_std"] == 0.5
    assert abs(row["reward_std"] - (0.0 + 0.4 / 2**0.5) / 2) < 1e-6  # std within each group, averaged
    assert abs(row["reward"] - 0.5) < 1e-6


def _dotted(tiny: list[str]) -> dict:
    import yaml

    return {k: yaml.safe_load(v) for k, v in (t.split("=", 1) for t in tiny)}


def test_rm_trainer_trains_on_a_dataset(tiny, world_artifacts, tmp_path) -> None:
    from datasets import Dataset

    _, _, files = world_artifacts
    overrides = {**_dotted(tiny), "run.name": "rm-api"}
    args = r2m.RMArguments(learning_rate=1e-3, num_train_epochs=1, report_to="none", overrides=overrides)
    trainer = r2m.RMTrainer(args=args, train_dataset=Dataset.from_json(str(files.pref_train)),
                            eval_dataset=str(files.pref_eval))
    output, result = trainer.train(), trainer.result
    assert output.global_step == result.steps and math.isfinite(output.training_loss)
    assert output.metrics["eval_accuracy"] == result.eval.accuracy
    assert result.steps > 0 and math.isfinite(result.final_loss)
    assert result.eval.n > 0 and 0.0 <= result.eval.accuracy <= 1.0


def test_ser_trainer_resolves_its_config(tiny) -> None:
    trainer = r2m.SERTrainer(args=r2m.SERArguments(seed=3, overrides=_dotted(tiny)), overrides={"ser.max_loops": 1})
    assert trainer.cfg.run.seed == 3 and trainer.cfg.ser.max_loops == 1


class Recorder(r2m.TrainerCallback):
    """Records every call; stops when ``stop(hook, step)`` says so."""

    def __init__(self, stop=lambda hook, step: False):
        self.calls, self.metrics, self.stop = [], {}, stop

    def _record(self, hook, step, value):
        self.calls.append((hook, step))
        self.metrics[(hook, step)] = value
        return self.stop(hook, step)

    def on_step_end(self, step, metrics):
        return self._record("step", step, dict(metrics))

    def on_evaluate(self, step, metrics):
        return self._record("evaluate", step, dict(metrics))

    def on_save(self, step, path):
        assert Path(path).is_dir(), path
        return self._record("save", step, path)


def test_rm_trainer_callback_stops_at_step_2(tiny, world_artifacts, tmp_path) -> None:
    _, _, files = world_artifacts
    cb = Recorder(stop=lambda hook, step: hook == "step" and step == 2)
    args = r2m.RMArguments(learning_rate=1e-3, num_train_epochs=1, report_to="none",
                        overrides={**_dotted(tiny), "run.root": str(tmp_path), "run.name": "rm-cb"})
    trainer = r2m.RMTrainer(args=args, train_dataset=str(files.pref_train), eval_dataset=str(files.pref_eval),
                            callbacks=[cb])
    trainer.train()
    result = trainer.result
    final = tmp_path / "rm-cb" / "checkpoints" / "final"
    # two steps (of 13), the stop's checkpoint, the held-out evaluation, the final model
    assert cb.calls == [("step", 1), ("step", 2), ("save", 2), ("evaluate", 2), ("save", 2)]
    assert cb.metrics[("save", 2)] == str(final) and (final / "config.json").is_file()
    assert result.stopped_early and result.steps == 2 and math.isfinite(result.final_loss)
    for step in (1, 2):
        m = cb.metrics[("step", step)]
        assert math.isfinite(m["rm/loss"]) and m["rm/lr"] > 0 and 0.0 <= m["rm/train_acc"] <= 1.0, m
    assert set(cb.metrics[("evaluate", 2)]) == {"rm/eval_acc", "rm/eval_gold_acc"}
    assert cb.metrics[("evaluate", 2)]["rm/eval_acc"] == result.eval.accuracy
    rows = [json.loads(line) for line in (tmp_path / "rm-cb" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and math.isfinite(rows[-1]["rm/loss"])  # the stopped step is logged


def test_callbacks_argument_is_checked() -> None:
    with pytest.raises(ConfigError, match="callbacks: expected a list"):
        r2m.RMTrainer(callbacks=Recorder())
    with pytest.raises(ConfigError, match=r"callbacks\[1\]: expected a transformers.TrainerCallback or an object"):
        r2m.RLTrainer(callbacks=[Recorder(), "print"])


# Thresholds loose enough that the tiny seed RM (a few steps) always finds pairs (as tests/recipes/test_ser.py).
SER_LOOSE = {"ser.tau_high": 0.5, "ser.tau_low": 0.5, "ser.tau_delta": 0.001, "ser.delta": 0.0, "ser.min_status1": 1,
             "ser.seed_steps": 4}


def test_ser_trainer_takes_objects_and_a_callback_stops_after_loop_0(tiny, world_artifacts, tmp_path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2m.recipes.pipeline import ensure_world_rm_backbone

    _, _, files = world_artifacts
    cfg = r2m.SERArguments(overrides={**_dotted(tiny), **SER_LOOSE, "run.root": str(tmp_path), "run.name": "ser-cb",
                                   "ser.max_loops": 2, "ser.ppo": False})
    backbone = ensure_world_rm_backbone(cfg.to_config())
    cb = Recorder(stop=lambda hook, loop: hook == "evaluate" and loop == 0)
    trainer = r2m.SERTrainer(model=AutoModelForCausalLM.from_pretrained(backbone), args=cfg,
                             processing_class=AutoTokenizer.from_pretrained(backbone),
                             train_dataset=Dataset.from_json(str(files.pref_train)),
                             eval_dataset=Dataset.from_json(str(files.pref_eval)), callbacks=[cb])
    assert trainer.cfg.rm.init_from.startswith(str(trainer.staging.dir("")))  # the object, saved for the loop
    result = trainer.train()
    assert cb.calls == [("save", 0), ("evaluate", 0)]
    assert cb.metrics[("save", 0)] == str(tmp_path / "ser-cb" / "loop-0" / "checkpoints" / "final")
    row = cb.metrics[("evaluate", 0)]
    assert row["status"] == "seed" and row["ser/selected"] > 0 and row["ser/train_steps"] == 4
    assert 0.0 <= row["ser/val_acc"] <= 1.0 and 0.0 <= row["ser/test_acc"] <= 1.0
    assert result.stop["reason"] == "callback" and result.stop["loop"] == 0
    assert [r["loop"] for r in result.history] == [0] and result.kept["loop"] == 0 and result.ppo is None
    assert "ended: callback at loop 0" in (tmp_path / "ser-cb" / "table.md").read_text()

    # A callback's stop resumes like max_loops: run.resume=auto goes on after loop 0, whose RM is kept as is.
    from r2m.config.parsing import replace_path

    loop0 = tmp_path / "ser-cb" / "loop-0" / "checkpoints" / "final" / "model.safetensors"
    mtime = loop0.stat().st_mtime_ns
    trainer.cfg, trainer.callbacks = replace_path(trainer.cfg, run__resume="auto", ser__max_loops=1), []
    again = trainer.train()
    # (it decides loop 1: here STOP or a retrained loop, whichever the tiny seed RM's validation says)
    assert again.stop["reason"] != "callback" and again.stop["loop"] == 1, again.stop
    assert loop0.stat().st_mtime_ns == mtime and again.history[0] == result.history[0]


def test_ser_trainer_passes_its_callbacks_to_the_ppo_stage(tiny, world_artifacts, tmp_path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy_dir, _, files = world_artifacts
    cb = Recorder()
    cfg = r2m.SERArguments(overrides={**_dotted(tiny), **SER_LOOSE, "run.root": str(tmp_path), "run.name": "ser-ppo",
                                   "ser.max_loops": 0, "ser.rl.steps": 1, "rl.max_new_tokens": 10})
    result = r2m.SERTrainer(policy=AutoModelForCausalLM.from_pretrained(policy_dir), args=cfg, callbacks=[cb],
                            policy_processing_class=AutoTokenizer.from_pretrained(policy_dir),
                            train_dataset=str(files.pref_train), eval_dataset=str(files.pref_eval),
                            eval_prompts_dataset=Dataset.from_json(str(files.eval_prompts))).train()
    # SER's loop 0, then the PPO stage's run_rl: evaluation before training, its one step, the final model
    assert cb.calls == [("save", 0), ("evaluate", 0), ("evaluate", 0), ("evaluate", 1), ("step", 1), ("save", 1)]
    assert result.stop["reason"] == "max_loops" and result.ppo is not None
    assert math.isfinite(cb.metrics[("step", 1)]["kl"]) and "eval/gold" in cb.metrics[("evaluate", 1)]
    assert cb.metrics[("save", 1)] == str(tmp_path / "ser-ppo-ppo" / "checkpoints" / "final")


def test_ser_trainer_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="policy: expected a path or a transformers model"):
        r2m.SERTrainer(policy=object())
    with pytest.raises(DataError, match="eval_prompts_dataset"):
        r2m.SERTrainer(eval_prompts_dataset=["a prompt"])
    with pytest.raises(ConfigError, match="args: expected an r2m.SERArguments"):
        r2m.SERTrainer(args=r2m.RLArguments())
    with pytest.raises(ConfigError, match="prompts_dataset: .*ser.ppo_prompts=world"):
        r2m.SERTrainer(prompts_dataset="p.jsonl", overrides={"ser.ppo_prompts": "split"})
    assert r2m.SERTrainer(prompts_dataset="p.jsonl").cfg.ser.ppo_prompts.value == "world"
