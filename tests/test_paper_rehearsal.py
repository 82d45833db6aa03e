"""Dress rehearsal of every paper config: the real command path (`r2m rl` / `r2m ser` with `-c configs/paper/X.yaml`),
overriding only

- model paths: random models of the same family built from config (Qwen2 for Qwen2.5, Llama for Llama 3 and
  Skywork, GPT-NeoX for Pythia), each with a BPE tokenizer trained here carrying the family's chat template and
  special tokens (the Llama tokenizers have no pad token, as the real ones) and the family's shipped
  ``generation_config.json`` (Qwen2.5's repetition penalty, top-k and top-p; here also an n-gram ban and min-p)
  (:mod:`r2m.models.families`);
- data paths: Parquet fixtures in the dataset's Hub schema (same columns, split names and file layout, with the
  dataset card's ``configs`` where the Hub has one), written into tmp;
- sizes: prompts per step, K, lengths, minibatches, rollout chunks, R2M's inner_dim, loops and steps.

Everything else is the file's: the algorithm, R2M's update, evaluation, Table 3, checkpoints (and a resume from
one), bf16 mixed precision, the dataset formats, splits and length filters.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest

from r2m.cli import main
from r2m.models.families import Family, save_family_model
from r2m.recipes.rehearsal import Plan, write_datasets
from r2m.runtime.runlog import read_metrics

pytestmark = pytest.mark.rehearsal

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))

QWEN_EXTRA = dict(no_repeat_ngram_size=3, min_p=0.05)
"""On top of Qwen2.5-Instruct's shipped sampling fields: the rest of what r2m must not inherit."""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("families")
    out = {f: str(save_family_model(f, d / f.value, seed=1, generation=QWEN_EXTRA if f == Family.QWEN2_5 else None))
           for f in (Family.QWEN2_5, Family.LLAMA3, Family.PYTHIA)}
    out["skywork"] = str(save_family_model(Family.LLAMA3_1, d / "skywork", rm=True, seed=2))
    out["pythia_rm"] = str(save_family_model(Family.PYTHIA, d / "pythia-rm", rm=True, seed=3))
    for name in (Family.LLAMA3, "skywork"):  # pad-less, as Meta's and Skywork's tokenizers
        assert json.loads(Path(out[name], "tokenizer_config.json").read_text()).get("pad_token") is None
    shipped = json.loads(Path(out[Family.QWEN2_5], "generation_config.json").read_text())
    assert shipped["repetition_penalty"] == 1.05 and shipped["top_k"] == 20 and shipped["top_p"] == 0.8
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return write_datasets(tmp_path_factory.mktemp("hub"))


class RMInputs:
    """Records what the reward models read (r2m.data.chat.RMRenderer.render)."""

    def __init__(self, monkeypatch):
        from r2m.data.chat import RMRenderer

        self.seen: list = []
        render = RMRenderer.render

        def spy(renderer, prompt, response):
            out = render(renderer, prompt, response)
            self.seen.append(out)
            return out

        monkeypatch.setattr(RMRenderer, "render", spy)


class LogitsProcessors:
    """Records the logits processors of every ``generate`` call: r2m's sampling must be the temperature alone."""

    def __init__(self, monkeypatch):
        from transformers.generation.utils import GenerationMixin

        self.seen: list[list[str]] = []
        build = GenerationMixin._get_logits_processor

        def spy(model, *args, **kwargs):
            out = build(model, *args, **kwargs)
            self.seen.append([type(p).__name__ for p in out])
            return out

        monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spy)

    def check(self, generates: bool) -> None:
        assert bool(self.seen) == generates, self.seen
        assert all(set(names) <= {"TemperatureLogitsWarper"} for names in self.seen), self.seen


def _finite_steps(run_dir: Path) -> list[dict]:
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss/total" in r]
    for r in rows:
        assert math.isfinite(r["loss/total"]) and math.isfinite(r["reward/proxy"]), r
    return rows


def _check_rl(plan: Plan) -> None:
    rows = _finite_steps(plan.run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all("data/rm_truncated" in r for r in rows)
    assert all(r["r2m/grebt"] == r["r2m/grebt"] for r in rows)  # R2M's update ran (finite)
    last = read_metrics(plan.run_dir / "metrics.jsonl")[-1]
    assert any(k.startswith("eval/") for k in last), "no evaluation row"
    assert any(k.startswith("rm_acc/") for r in read_metrics(plan.run_dir / "metrics.jsonl") for k in r), "no Table 3"


def _resume(plan: Plan, capsys) -> None:
    """Resume from the step-1 checkpoint (as after a kill during step 2): step 2 runs again from its state and gives
    the same metrics."""
    ckpts = sorted(p.name for p in (plan.run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-000001", "step-000002"], ckpts  # the last step always gets a checkpoint
    shutil.rmtree(plan.run_dir / "checkpoints" / "step-000002")  # as if killed during step 2
    before = {r["step"]: r for r in _finite_steps(plan.run_dir)}
    assert main(plan.argv("run.resume=auto")) == 0, capsys.readouterr().err
    after = {r["step"]: r for r in _finite_steps(plan.run_dir)}
    assert sorted(after) == [1, 2]
    for key in ("loss/total", "reward/proxy", "kl"):
        assert after[2][key] == pytest.approx(before[2][key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("config", PAPER, ids=lambda p: p.stem)
def test_paper_config_rehearsal(config, models, data, tmp_path, monkeypatch, capsys) -> None:
    plan = Plan(config, models, data, tmp_path / "runs")
    spy, processors = RMInputs(monkeypatch), LogitsProcessors(monkeypatch)
    t0 = time.perf_counter()
    assert main(plan.argv()) == 0, capsys.readouterr().err
    processors.check(generates=plan.command == "rl" or "hh" in plan.name)  # nothing inherited from the checkpoints
    wall = time.perf_counter() - t0
    print(f"rehearsal {plan.name}: {wall:.1f}s")
    assert spy.seen, "the reward model read nothing"
    if plan.command == "rl":
        _check_rl(plan)
        _resume(plan, capsys)
    else:
        assert (plan.run_dir / "table.md").exists()
        if "hh" in plan.name:  # ser.ppo: the PPO stage ran 2 steps with the evolved RM
            assert [r["step"] for r in _finite_steps(Path(str(plan.run_dir) + "-ppo"))] == [1, 2]
    if "ultrafeedback" in plan.name and plan.command == "rl":
        # The RM reads the conversation in its own (Llama 3.1) template, never the policy's.
        chats = [s.text for s in spy.seen if s.text is not None]
        assert chats and all(t.startswith("<|start_header_id|>system<|end_header_id|>") for t in chats)
        assert all("<|im_start|>" not in t for t in chats)
        assert all(t.endswith("<|eot_id|>") for t in chats)
        assert all("Write one line about" in t for t in chats)
    if "tldr" in plan.name or "hh" in plan.name:
        assert all(s.text is None for s in spy.seen)  # plain-text prompts: prompt then response, for every model


def test_qwen_config_policy_and_skywork_rm_read_their_own_templates(models, data, tmp_path, monkeypatch) -> None:
    """The policy's prompt set is Qwen's ChatML; the Skywork-style RM's input is Llama 3.1's template of the same
    conversation (with the reply), built through the paper config's real setup."""
    from r2m.config.parsing import load_config
    from r2m.recipes.rl.build import build_run

    plan = Plan(ROOT / "configs" / "paper" / "r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", models, data,
                tmp_path / "runs")
    cfg = load_config(ROOT / "configs" / "paper" / f"{plan.name}.yaml", plan.overrides)
    rl = build_run(cfg)
    prompt = rl.train_prompts.texts[0]
    assert prompt.startswith("<|im_start|>system\nYou are Qwen") and prompt.endswith("<|im_start|>assistant\n")
    rm = rl.reward_fn.reward_model
    enc = rm.tokenize([prompt], ["Here is a line.<|im_end|>"])
    seen = rm.tokenizer.decode(enc["input_ids"][0], skip_special_tokens=False)
    messages = [{"role": "user", "content": prompt.messages[0]["content"]},
                {"role": "assistant", "content": "Here is a line."}]
    assert seen == rm.tokenizer.apply_chat_template(messages, tokenize=False)
    assert seen.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    rl.run.close()


BROKEN = {
    "too_long_budget": (["rl.max_new_tokens=40000"],
                        "reward.max_length: expected >= data.max_prompt_tokens + rl.max_new_tokens"),
    "over_the_positions": (["rl.max_new_tokens=32760", "reward.max_length=40000"],
                           "data.max_prompt_tokens + rl.max_new_tokens: policy"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_variant_is_refused_naming_the_field(case, models, data, tmp_path, capsys) -> None:
    plan = Plan(ROOT / "configs" / "paper" / "r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", models, data,
                tmp_path / "runs")
    extra, message = BROKEN[case]
    assert main(plan.argv(*extra)) == 2
    assert message in capsys.readouterr().err
    assert not plan.run_dir.exists()


def test_wrong_chat_template_is_refused(models, data, tmp_path, capsys) -> None:
    """A policy whose chat template cannot render the dataset's conversations fails with an error naming it."""
    from r2m.models.loading import load_tokenizer

    bad = Path(shutil.copytree(models[Family.QWEN2_5], tmp_path / "bad-policy"))
    tok = load_tokenizer(str(bad))
    tok.chat_template = "{{ raise_exception('this template has no user role') }}"
    tok.save_pretrained(bad)
    plan = Plan(ROOT / "configs" / "paper" / "r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", models, data,
                tmp_path / "runs")
    assert main(plan.argv(f"policy.path={bad}")) == 2
    err = capsys.readouterr().err
    assert "chat template" in err and "this template has no user role" in err, err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmd: list[str]) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


TORCHRUN_CONFIG = ROOT / "configs" / "paper" / "r2m_qwen2.5-3b_ultrafeedback_rloo.yaml"


def test_r2m_config_under_torchrun_two_processes(models, data, tmp_path) -> None:
    """`torchrun --nproc_per_node 2` (gloo, CPU) of the Qwen RLOO + R2M config: the same 2 steps, rank 0 writes."""
    plan = Plan(TORCHRUN_CONFIG, models, data, tmp_path / "runs")
    proc = _launch(["torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                    str(_free_port()), "-m", "r2m", *plan.argv("run.device=cpu")])
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = _finite_steps(plan.run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert any(k.startswith("rm_acc/") for r in read_metrics(plan.run_dir / "metrics.jsonl") for k in r)



# FSDP on CPU is not rehearsed: accelerate (1.15) turns its FSDP plugin on only for accelerator devices (MULTI_GPU,
# MULTI_XPU, ...); on CPU, `accelerate launch --config_file configs/accelerate/fsdp.yaml` runs as MULTI_CPU, i.e.
# plain gloo DDP, which the torchrun test above covers. torch's own fully_shard does run on CPU with gloo, but only
# outside accelerate, which is not r2m's path. See README "Run on your GPUs".
