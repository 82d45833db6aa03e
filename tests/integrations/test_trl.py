"""R2M inside TRL: examples/trl_grpo_r2m.py (the README's "With TRL" block) runs 3 GRPO steps with R2M;
checkpoints carry fusion and head and resume restores them; split groups are refused; an RLOO smoke run."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'r2m[trl]'): the TRL integration tests skip")

from r2m.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from r2m.integrations.trl import R2MCallback, R2MReward, check_groups  # noqa: E402
from r2m.models.r2m import FeedbackRewardModel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "trl_grpo_r2m.py"


def _example():
    spec = importlib.util.spec_from_file_location("trl_grpo_r2m", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def grpo_run(world_artifacts, tmp_path_factory):
    """The example's 3 GRPO + R2M steps, with the R2M state before and after."""
    policy_dir, rm_dir, files = world_artifacts
    out = tmp_path_factory.mktemp("trl") / "grpo"
    trainer = _example().build(str(policy_dir), str(rm_dir), str(files.prompts), str(out), steps=3)
    reward = trainer.reward_funcs[0]
    before = {"fusion": _state(reward.model.fusion), "head": _state(reward.model.head),
              "backbone": _state(reward.model.rm.backbone)}
    trainer.train()
    return SimpleNamespace(trainer=trainer, reward=reward, before=before, out=out, rm_dir=rm_dir,
                           callback=next(c for c in trainer.callback_handler.callbacks if isinstance(c, R2MCallback)))


def test_readme_includes_the_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## With TRL\n.*?```python\n(.*?)```", readme, re.S)
    assert block is not None, "README.md has no python block in a '## With TRL' section"
    assert block.group(1) == EXAMPLE.read_text(), "README's With TRL block and examples/trl_grpo_r2m.py differ"


def test_grpo_with_r2m_trains_fusion_and_head_only(grpo_run) -> None:
    run = grpo_run
    assert [h["step"] for h in run.callback.history] == [1, 2, 3]  # one GREBT update after each step
    assert all(math.isfinite(h["r2m/grebt"]) for h in run.callback.history)
    model = run.reward.model
    assert any(not torch.equal(v, _state(model.fusion)[k]) for k, v in run.before["fusion"].items() if k != "calibrated")
    assert not torch.equal(run.before["head"]["weight"], model.head.weight)
    after = _state(model.rm.backbone)
    assert all(torch.equal(v, after[k]) for k, v in run.before["backbone"].items())  # frozen
    assert bool(model.fusion.calibrated) and run.reward.reward.calibration is not None  # init=matched, once
    assert run.reward.feedback_rows == 3 * 8  # one extra forward per generation batch, over its 8 completions
    logged = [row for row in run.trainer.state.log_history if "r2m/grebt" in row]
    assert len(logged) == 3 and all("rewards/r2m/mean" in row for row in logged)
    omegas = [h["r2m/omega"] for h in run.callback.history]
    assert omegas[0] == 1.0 and omegas[0] > omegas[1] > omegas[2]  # ω(t) from global_step / max_steps


def test_checkpoint_holds_fusion_and_head(grpo_run) -> None:
    run = grpo_run
    saved = run.out / "checkpoint-3" / "r2m"
    loaded = FeedbackRewardModel.from_pretrained(saved)
    assert loaded.info == {"omega_floor": 0.6, "total_steps": 3}
    for k, v in _state(run.reward.model.fusion).items():
        assert torch.equal(_state(loaded.fusion)[k], v)
    assert torch.equal(loaded.head.weight, run.reward.model.head.weight)
    assert str(run.out) not in (saved / "r2m.json").read_text()  # the base RM named relative to the directory


def test_resume_restores_fusion_head_and_optimizer(grpo_run, world_artifacts) -> None:
    policy_dir, rm_dir, files = world_artifacts
    run = grpo_run
    trainer = _example().build(str(policy_dir), str(rm_dir), str(files.prompts), str(run.out), steps=4)
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, R2MCallback))
    restored = {}
    original = callback.restore

    def spy(checkpoint):
        original(checkpoint)
        restored["head"] = callback.reward.model.head.weight.detach().clone()
        restored["steps"] = int(next(iter(callback.updater.optimizer.state.values()))["step"])

    callback.restore = spy
    trainer.train(resume_from_checkpoint=str(run.out / "checkpoint-3"))
    assert torch.equal(restored["head"], run.reward.model.head.weight)
    assert restored["steps"] == 3  # the RM optimiser's state came back with its three updates
    assert [h["step"] for h in callback.history] == [4]
    with pytest.raises(CheckpointError, match="no R2M state to resume from"):
        callback.restore(run.out / "no-such-checkpoint")


def test_rloo_smoke(world_artifacts, tmp_path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    from r2m.config import R2MConfig

    policy_dir, rm_dir, files = world_artifacts
    policy = AutoModelForCausalLM.from_pretrained(str(policy_dir))
    tok = AutoTokenizer.from_pretrained(str(policy_dir))
    reward = R2MReward.from_base(str(rm_dir), policy, tok, R2MConfig(enabled=True, lr=1e-3))
    head = reward.model.head.weight.detach().clone()
    args = RLOOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, learning_rate=1e-4, beta=0.0, save_strategy="no", logging_steps=1,
                      report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0)
    callback = R2MCallback(reward)
    RLOOTrainer(model=policy, reward_funcs=[reward], args=args, processing_class=tok, callbacks=[callback],
                train_dataset=Dataset.from_json(str(files.prompts)).select_columns(["prompt"])).train()
    assert len(callback.history) == 2 and all(math.isfinite(h["r2m/grebt"]) for h in callback.history)
    assert not torch.equal(head, reward.model.head.weight)


def test_a_split_group_is_refused(grpo_run) -> None:
    callback = R2MCallback(grpo_run.reward)
    args = SimpleNamespace(num_generations=4, per_device_train_batch_size=6, steps_per_generation=1)
    with pytest.raises(ConfigError, match=r"6 completions, not a multiple of num_generations=4, so a group would be "
                                          r"split across processes"):
        callback.on_train_begin(args, SimpleNamespace(global_step=0), None, model=grpo_run.trainer.model)
    with pytest.raises(ConfigError, match="not a multiple of num_generations=4"):
        check_groups(["a"] * 6, 4)
    with pytest.raises(ConfigError, match="rows 0..1 are not 2 completions of one prompt"):
        check_groups(["a", "b", "a", "b"], 2)
    check_groups(["a", "a", "b", "b"], 2)


def test_conversational_prompts_and_a_missing_callback_are_refused(grpo_run) -> None:
    with pytest.raises(DataError, match="conversational datasets are not supported"):
        grpo_run.reward([[{"role": "user", "content": "hi"}]] * 4, ["x"] * 4)
    unbound = R2MReward(grpo_run.reward.model, grpo_run.reward.tokenizer)
    with pytest.raises(ConfigError, match=r"no policy bound; pass callbacks=\[R2MCallback\(reward\)\]"):
        unbound(["<bos> 1 =>"] * 4, ["1 <eos>"] * 4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(world_artifacts, out: Path, per_device: int):
    import os
    import subprocess
    import sys

    policy_dir, rm_dir, files = world_artifacts
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(Path(__file__).with_name("trl_two_process.py")),
           str(policy_dir), str(rm_dir), str(files.prompts), str(out), str(per_device)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_keep_one_r2m_and_refuse_split_groups(world_artifacts, tmp_path) -> None:
    import json

    # 8 completions per process = 2 whole groups of 4: fusion and head gradients averaged over the 2 ranks
    proc = _two_processes(world_artifacts, tmp_path / "whole", 8)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "whole" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params"] == ranks[1]["params"]  # one R2M, though each rank started from its own init
    assert len(ranks[0]["grebt"]) == 2 and all(math.isfinite(x) for x in ranks[0]["grebt"])
    # 2 completions per process: each group of 4 would straddle the two processes
    proc = _two_processes(world_artifacts, tmp_path / "split", 2)
    assert proc.returncode != 0
    assert "2 completions, not a multiple of num_generations=4, so a group would be split" in proc.stderr


def test_cost_script_counts_and_times_the_extra_forward(world_artifacts, monkeypatch, capsys) -> None:
    """examples/trl_r2m_cost.py: FLOPs and seconds of the extra forward and of both loops' steps (2 timed steps
    here; the script's own 20 on a quiet machine give the figures of docs/TRL.md)."""
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location("trl_r2m_cost", ROOT / "examples" / "trl_r2m_cost.py")
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)
    monkeypatch.setattr(cost, "TIME_STEPS", 2)
    policy_dir, rm_dir, files = world_artifacts
    report = cost.main([str(policy_dir), str(rm_dir), str(files.prompts)])
    assert 0 < report["trl_extra_forward_flops"] < report["trl_step_flops"]
    assert 0 < report["trl_extra_forward_s"] < report["trl_step_s"] and report["r2m_loop_step_s"] > 0
    assert report["time_steps"] == 2 and 0 < report["extra_forward_share_of_trl_step_time"] < 1
    assert '"trl_step_s"' in capsys.readouterr().out
    sys.modules.pop("trl_grpo_r2m", None)
