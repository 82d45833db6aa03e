"""R2M inside TRL, as a TRL user runs it: examples/trl_grpo_r2m.py (the README's "With TRL" block) with its tiny
config (conversational prompts, LoRA, evaluation every 2 steps, a generation batch reused over 2 steps). The
RM's updates read only training groups; fusion and head train, the backbone does not; checkpoints, save_model
and push_to_hub carry the R2M, which loads from a moved folder; resume restores it. Also: an RLOO smoke run on the
gold-reward world, split groups refused, two processes, the cost script."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'r2m[trl]'): the TRL integration tests skip")

from r2m.errors import CheckpointError, ConfigError  # noqa: E402
from r2m.integrations.trl import R2MCallback, R2MReward, check_groups  # noqa: E402
from r2m.models.r2m import FeedbackRewardModel  # noqa: E402
from r2m.updates.grebt import GREBTUpdater  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "trl_grpo_r2m.py"
TINY = ROOT / "examples" / "trl_grpo_r2m_tiny.yaml"


def _example():
    spec = importlib.util.spec_from_file_location("trl_grpo_r2m", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_trainer(out: Path, *cli: str):
    """The example's GRPOTrainer, from its tiny config and TRL command-line overrides."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    example = _example()
    parser = TrlParser((example.R2MScriptArguments, GRPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(
        ["--config", str(TINY), "--output_dir", str(out), *cli])
    return example.build(script_args, training_args, model_args), script_args


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _user_text(prompt) -> str:
    return prompt[-1]["content"]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """The example's 4 GRPO + R2M steps; every GREBT update's groups and every prompt the reward scored."""
    out = tmp_path_factory.mktemp("trl") / "grpo"
    trainer, _ = example_trainer(out, "--hub_model_id", "me/tiny-grpo-r2m")
    reward = trainer.reward_funcs[0]
    before = {"fusion": _state(reward.model.fusion), "head": _state(reward.model.head),
              "backbone": _state(reward.model.rm.backbone)}
    seen = SimpleNamespace(updates=[], scored=[])
    update, call = GREBTUpdater.update, R2MReward.__call__

    def record_update(self, batch, hidden):
        seen.updates.append([_user_text(p) for p in batch.prompts])
        return update(self, batch, hidden)

    def record_call(self, prompts, completions, **kw):
        seen.scored.append(([_user_text(p) for p in prompts], self.scores_training_batch()))
        return call(self, prompts, completions, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GREBTUpdater, "update", record_update)
        mp.setattr(R2MReward, "__call__", record_call)
        trainer.train()
    return SimpleNamespace(trainer=trainer, reward=reward, before=before, out=out, seen=seen,
                           train=[_user_text(p) for p in trainer.train_dataset["prompt"]],
                           test=[_user_text(p) for p in trainer.eval_dataset["prompt"]],
                           callback=next(c for c in trainer.callback_handler.callbacks if isinstance(c, R2MCallback)))


def test_readme_includes_the_example_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## With TRL\n.*?```python\n(.*?)```", readme, re.S)
    assert block is not None, "README.md has no python block in a '## With TRL' section"
    assert block.group(1) == EXAMPLE.read_text(), "README's With TRL block and examples/trl_grpo_r2m.py differ"


def test_updates_read_only_training_groups_once(grpo_run) -> None:
    run = grpo_run
    assert any(set(rows) <= set(run.test) and not train for rows, train in run.seen.scored)  # evaluation scored
    # steps_per_generation=2: a generation batch at steps 1 and 3, reused at steps 2 and 4 (no update there)
    assert [h["step"] for h in run.callback.history] == [1, 3]
    used = [p for groups in run.seen.updates for p in groups]
    assert set(used) <= set(run.train) and not set(used) & set(run.test)
    scored_for_training = [p for rows, train in run.seen.scored if train for p in rows[::4]]
    assert used == scored_for_training and len(used) == 2 * 2  # every training group once: 2 batches x 2 groups


def test_grpo_with_r2m_trains_fusion_and_head_only(grpo_run) -> None:
    run = grpo_run
    assert all(math.isfinite(h["r2m/grebt"]) for h in run.callback.history)
    model = run.reward.model
    assert any(not torch.equal(v, _state(model.fusion)[k]) for k, v in run.before["fusion"].items() if k != "calibrated")
    assert not torch.equal(run.before["head"]["weight"], model.head.weight)
    after = _state(model.rm.backbone)
    assert all(torch.equal(v, after[k]) for k, v in run.before["backbone"].items())  # frozen
    assert bool(model.fusion.calibrated) and run.reward.reward.calibration is not None  # init=matched, once
    # the extra forward: 2 training generation batches of 8, and 2 evaluations of 8 prompts x 4
    assert run.reward.feedback_rows == 2 * 8 + 2 * 32
    logged = [row for row in run.trainer.state.log_history if "r2m/grebt" in row]
    assert [row["step"] for row in logged] == [1, 3] and all("rewards/r2m/mean" in row for row in logged)
    assert any("eval_r2m/vanilla_reward" in row for row in run.trainer.state.log_history)
    omegas = [h["r2m/omega"] for h in run.callback.history]
    assert omegas[0] == 1.0 and omegas[0] > omegas[1]  # ω(t) from global_step / max_steps
    assert any("lora_" in n for n, _ in run.trainer.model.named_parameters())  # the policy trained with LoRA


def test_checkpoints_and_save_model_hold_the_trained_r2m(grpo_run) -> None:
    run = grpo_run
    saved = run.out / "checkpoint-4" / "r2m"
    loaded = FeedbackRewardModel.from_pretrained(saved)
    assert loaded.info == {"omega_floor": 0.6, "total_steps": 4}
    for k, v in _state(run.reward.model.fusion).items():
        assert torch.equal(_state(loaded.fusion)[k], v)
    assert torch.equal(loaded.head.weight, run.reward.model.head.weight)
    run.trainer.save_model()
    final = FeedbackRewardModel.from_pretrained(run.out, subfolder="r2m")  # save_model's directory
    assert torch.equal(final.head.weight, run.reward.model.head.weight)
    assert (run.out / "adapter_model.safetensors").is_file()  # the policy's LoRA adapter beside it


def _fake_hub(tmp_path: Path, monkeypatch) -> list:
    """transformers' Trainer talks to the Hub through ``hf_api()``: a stand-in that copies the upload locally, with
    the Trainer's own ignore patterns applied (``checkpoint-*``)."""
    import transformers.trainer
    from huggingface_hub.utils import filter_repo_objects

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id))
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kw):
            calls.append(("upload_folder", repo_id))
            files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
            for rel in filter_repo_objects(files, ignore_patterns=ignore_patterns):
                (tmp_path / "hub" / repo_id / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder_path) / rel, tmp_path / "hub" / repo_id / rel)
            return "https://huggingface.co/" + repo_id

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeApi())
    return calls


def test_push_to_hub_carries_the_r2m_which_loads_from_a_moved_folder(grpo_run, tmp_path, monkeypatch) -> None:
    from r2m.models.feedback import sequence_feedback

    run = grpo_run
    calls = _fake_hub(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="whose base RM is the local path .* include_base=True"):
        run.trainer.push_to_hub()  # the tiny base RM is a local directory: it would not load from the Hub
    assert calls == []
    run.callback.include_base = True
    run.trainer.push_to_hub()
    up = tmp_path / "hub" / "me" / "tiny-grpo-r2m"
    assert (up / "adapter_model.safetensors").is_file() and not list(up.glob("checkpoint-*"))
    assert sorted(p.name for p in (up / "r2m").iterdir()) == ["README.md", "base", "manifest.json", "r2m.json",
                                                              "r2m.safetensors"]
    assert 'from_pretrained("me/tiny-grpo-r2m", subfolder="r2m")' in (up / "r2m" / "README.md").read_text()
    # a "download" elsewhere: the R2M loads from its folder alone and scores as the trained one does
    shutil.move(str(up), str(tmp_path / "downloaded"))
    loaded = FeedbackRewardModel.from_pretrained(tmp_path / "downloaded", subfolder="r2m")
    model, tok = run.reward.model, run.reward.tokenizer
    texts, replies = ["hello there"] * 2, ["the sky is blue", "paris"]
    h = sequence_feedback(run.trainer.model, [tok(t + r)["input_ids"] for t, r in zip(texts, replies)], 0,
                          torch.device("cpu"))
    rte = model.embed_texts(texts, replies)
    torch.testing.assert_close(loaded.score_embeddings(loaded.embed_texts(texts, replies), h.hidden, h.mask, 0.7),
                               model.score_embeddings(rte, h.hidden, h.mask, 0.7))
    torch.testing.assert_close(loaded.vanilla_score(rte), model.vanilla_score(rte))


def test_save_model_output_loads_after_a_move(grpo_run, tmp_path) -> None:
    run = grpo_run
    run.callback.include_base = False
    run.callback.save(run.out / "r2m", run.trainer.state)  # as on_train_end wrote it: the base RM named, not stored
    meta = json.loads((run.out / "r2m" / "r2m.json").read_text())
    assert meta["base_rm_kind"] == "local" and meta["base_rm_relative"] == "../tiny-models/rm"
    shutil.copytree(run.out / "r2m", tmp_path / "alone" / "r2m")  # the R2M alone: its base by absolute path
    alone = FeedbackRewardModel.from_pretrained(tmp_path / "alone" / "r2m")
    shutil.copytree(run.out, tmp_path / "whole")  # the output directory with its tiny models: by relative path
    whole = FeedbackRewardModel.from_pretrained(tmp_path / "whole", subfolder="r2m")
    assert whole.base_rm == str((tmp_path / "whole" / "tiny-models" / "rm").resolve())
    for loaded in (alone, whole):
        assert torch.equal(loaded.head.weight, run.reward.model.head.weight)


def test_resume_restores_fusion_head_and_optimizer(grpo_run) -> None:
    run = grpo_run
    trainer, _ = example_trainer(run.out, "--max_steps", "6", "--eval_strategy", "no")
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, R2MCallback))
    restored = {}
    original = callback.restore

    def spy(checkpoint):
        original(checkpoint)
        restored["head"] = callback.reward.model.head.weight.detach().clone()
        restored["steps"] = int(next(iter(callback.updater.optimizer.state.values()))["step"])

    callback.restore = spy
    trainer.train(resume_from_checkpoint=str(run.out / "checkpoint-4"))
    assert torch.equal(restored["head"], run.reward.model.head.weight)
    assert restored["steps"] == 2  # the RM optimiser's state came back with its two updates
    assert [h["step"] for h in callback.history] == [5]
    with pytest.raises(CheckpointError, match="no R2M state to resume from"):
        callback.restore(run.out / "no-such-checkpoint")


def test_the_example_runs_as_a_script(tmp_path) -> None:
    """What CI runs: the TRL user's script on its tiny config, as a subprocess."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--config", str(TINY), "--output_dir", str(tmp_path / "out"),
                           "--max_steps", "2", "--save_strategy", "no"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "'r2m_updates_at_steps': [1]" in proc.stdout
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert FeedbackRewardModel.from_pretrained(tmp_path / "out" / "r2m").fusion is not None


def test_rloo_smoke(world_artifacts, tmp_path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    from r2m.config.models import R2MConfig

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
    assert (tmp_path / "r2m" / "r2m.safetensors").is_file()  # the trained R2M, where save_model writes


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


def test_a_missing_callback_is_refused(grpo_run) -> None:
    unbound = R2MReward(grpo_run.reward.model, grpo_run.reward.tokenizer)
    with pytest.raises(ConfigError, match=r"no policy bound; pass callbacks=\[R2MCallback\(reward\)\]"):
        unbound(["hi"] * 4, ["there"] * 4)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(world_artifacts, out: Path, per_device: int):
    import os

    policy_dir, rm_dir, files = world_artifacts
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(Path(__file__).with_name("trl_two_process.py")),
           str(policy_dir), str(rm_dir), str(files.prompts), str(out), str(per_device)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_keep_one_r2m_and_refuse_split_groups(world_artifacts, tmp_path) -> None:
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


def test_cost_script_counts_and_times_the_extra_forward(world_artifacts, capsys) -> None:
    """examples/trl_r2m_cost.py: FLOPs and seconds of the extra forward and of both loops' steps (2 timed steps
    here; the script's own 20 on a quiet machine give the figures of docs/TRL.md)."""
    spec = importlib.util.spec_from_file_location("trl_r2m_cost", ROOT / "examples" / "trl_r2m_cost.py")
    cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cost)
    cost.TIME_STEPS = 2
    policy_dir, rm_dir, files = world_artifacts
    report = cost.main([str(policy_dir), str(rm_dir), str(files.prompts)])
    assert 0 < report["trl_extra_forward_flops"] < report["trl_step_flops"]
    assert 0 < report["trl_extra_forward_s"] < report["trl_step_s"] and report["r2m_loop_step_s"] > 0
    assert report["time_steps"] == 2 and 0 < report["extra_forward_share_of_trl_step_time"] < 1
    assert '"trl_step_s"' in capsys.readouterr().out
