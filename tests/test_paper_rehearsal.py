"""Dress rehearsal of every paper config: the real command path (`r2m rl` / `r2m ser` with `-c configs/paper/X.yaml`),
overriding only

- model paths: random models of the same family built from config (Qwen2 for Qwen2.5, Llama for Llama 3 and
  Skywork, GPT-NeoX for Pythia), each with a BPE tokenizer trained here carrying the family's chat template
  (:mod:`r2m.models.families`);
- data paths: Parquet fixtures in the dataset's Hub schema (same columns, split names and file layout, with the
  dataset card's ``configs`` where the Hub has one), written into tmp;
- sizes: prompts per step, K, lengths, minibatches, rollout chunks, R2M's inner_dim, loops and steps.

Everything else is the file's: the algorithm, R2M's update, evaluation, Table 3, checkpoints (and a resume from
one), bf16 mixed precision, the dataset formats, splits and length filters.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import pytest

from r2m.cli import main
from r2m.models.families import Family, save_family_model
from r2m.runlog import read_metrics

pytestmark = pytest.mark.rehearsal

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))

# ---------------------------------------------------------------------------------------------
# Datasets in their Hub layout
# ---------------------------------------------------------------------------------------------

TOPICS = ["the sea", "bread", "the moon", "a cat", "rain", "music", "a garden", "winter", "trains", "tea",
          "a river", "the sun"]


def _parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _card(root: Path, splits: list[str]) -> None:
    """The dataset card's ``configs`` block, as the Hub repo has it (split names are not train/test only)."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for s in splits:
        lines += [f"  - split: {s}", f"    path: data/{s}-*"]
    (root / "README.md").write_text("\n".join([*lines, "---", ""]))


def ultrafeedback(root: Path) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized: six splits, chosen/rejected/messages as chat message lists."""
    splits = {"train_prefs": 120, "test_prefs": 6, "train_sft": 2, "test_sft": 2, "train_gen": 2, "test_gen": 2}
    for split, n in splits.items():
        rows = []
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            prompt = f"Write one line about {topic} {i}."
            chosen = [{"content": prompt, "role": "user"}, {"content": f"Here is a line about {topic}.", "role": "assistant"}]
            rejected = [{"content": prompt, "role": "user"}, {"content": "No.", "role": "assistant"}]
            rows.append({"prompt": prompt, "prompt_id": f"{split}-{i:04d}", "chosen": chosen, "rejected": rejected,
                         "messages": chosen, "score_chosen": 8.5, "score_rejected": 3.0})
        _parquet(rows, root / "data" / f"{split}-00000-of-00001.parquet")
    _card(root, list(splits))
    return root


def _post(i: int) -> str:
    return f"SUBREDDIT: r/AskReddit\n\nTITLE: about {TOPICS[i % len(TOPICS)]}\n\nPOST: I keep thinking about it.\n\nTL;DR:"


def tldr(root: Path) -> Path:
    """trl-lib/tldr: prompt/completion, splits train/validation/test (data/<split>-00000-of-00001.parquet)."""
    for split, n in {"train": 12, "validation": 2, "test": 6}.items():
        _parquet([{"prompt": _post(i), "completion": f" thinking about {TOPICS[i % len(TOPICS)]}"} for i in range(n)],
                 root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def tldr_preference(root: Path) -> Path:
    """trl-lib/tldr-preference: prompt/chosen/rejected strings, splits train/validation."""
    for split, n in {"train": 4, "validation": 6}.items():
        _parquet([{"prompt": _post(i), "chosen": f" thinking about {TOPICS[i % len(TOPICS)]}", "rejected": " no"}
                  for i in range(n)], root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def hh_rlhf(root: Path) -> Path:
    """Anthropic/hh-rlhf: chosen/rejected transcripts in per-subset folders, train/test files in each."""
    for subset, offset in (("helpful-base", 0), ("harmless-base", 100)):
        for split, n in {"train": 120, "test": 8}.items():
            rows = []
            for i in range(n):
                topic = TOPICS[(i + offset) % len(TOPICS)]
                head = f"\n\nHuman: tell me about {topic} {i}\n\nAssistant:"
                rows.append({"chosen": f"{head} It is nice.", "rejected": f"{head} Go away."})
            _parquet(rows, root / subset / f"{split}.parquet")
    return root


# ---------------------------------------------------------------------------------------------
# What each config gets
# ---------------------------------------------------------------------------------------------

R2M_SIZES = ["rl.steps=2", "rl.prompts_per_step=4", "rl.k=2", "rl.max_new_tokens=6", "rl.minibatches=2",
             "rl.micro_batch_size=2", "rl.rollout_batch_size=4", "rl.rollout_chunks=2", "rl.eval_every=1",
             "rl.save_every=1", "data.max_prompt_tokens=200", "reward.r2m.inner_dim=16", "eval.batch_size=4"]
SER_SIZES = ["ser.max_loops=1", "ser.ppo_steps=2", "ser.min_status1=1", "rm.batch_size=8", "rm.epochs=1",
             "rl.prompts_per_step=4", "rl.minibatches=2", "rl.rollout_batch_size=4", "rl.max_new_tokens=6",
             "rl.eval_every=1", "rl.save_every=1", "data.max_prompt_tokens=200", "eval.batch_size=4"]


class Plan:
    """The overrides of one paper config and the command it runs."""

    def __init__(self, config: Path, models: dict, data: dict, root: Path):
        name = config.stem
        self.command = "ser" if name.startswith("ser_") else "rl"
        self.name = name
        paths = {"run.root": root, "run.name": name}
        if name.startswith("r2m_qwen"):
            paths |= {"policy.path": models[Family.QWEN2_5], "reward.path": models["skywork"]}
        elif name.startswith("r2m_llama3"):
            paths |= {"policy.path": models[Family.LLAMA3], "reward.path": models["skywork"]}
        elif name.startswith("r2m_pythia"):
            paths |= {"policy.path": models[Family.PYTHIA], "reward.path": models["pythia_rm"]}
        else:
            paths |= {"policy.path": models[Family.LLAMA3], "rm.init_from": models[Family.LLAMA3]}
        if "ultrafeedback" in name:
            uf = data["ultrafeedback"]
            paths |= {f"data.{f}": uf for f in ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval",
                                               "pref_policy")}
        elif "tldr" in name:
            paths |= {"data.prompts": data["tldr"], "data.eval_prompts": data["tldr"], "data.sft": data["tldr"],
                      "data.pref_eval": data["tldr_preference"]}
        else:
            hh = data["hh_rlhf"]
            paths |= {f"data.{f}": hh for f in ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval",
                                               "pref_policy")}
        sizes = SER_SIZES if self.command == "ser" else R2M_SIZES
        self.overrides = [f"{k}={v}" for k, v in paths.items()] + sizes
        self.run_dir = root / name

    def argv(self, *extra: str) -> list[str]:
        return [self.command, "-c", str(ROOT / "configs" / "paper" / f"{self.name}.yaml"), *self.overrides, *extra]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("families")
    out = {f: str(save_family_model(f, d / f.value, seed=1)) for f in (Family.QWEN2_5, Family.LLAMA3, Family.PYTHIA)}
    out["skywork"] = str(save_family_model(Family.LLAMA3_1, d / "skywork", rm=True, seed=2))
    out["pythia_rm"] = str(save_family_model(Family.PYTHIA, d / "pythia-rm", rm=True, seed=3))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("hub")
    return {"ultrafeedback": str(ultrafeedback(d / "ultrafeedback_binarized")), "tldr": str(tldr(d / "tldr")),
            "tldr_preference": str(tldr_preference(d / "tldr-preference")), "hh_rlhf": str(hh_rlhf(d / "hh-rlhf"))}


class RMInputs:
    """Records what the reward models read (r2m.chat.RMRenderer.render)."""

    def __init__(self, monkeypatch):
        from r2m.chat import RMRenderer

        self.seen: list = []
        render = RMRenderer.render

        def spy(renderer, prompt, response):
            out = render(renderer, prompt, response)
            self.seen.append(out)
            return out

        monkeypatch.setattr(RMRenderer, "render", spy)


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
    assert ckpts == ["step-000001"], ckpts
    before = {r["step"]: r for r in _finite_steps(plan.run_dir)}
    assert main(plan.argv("run.resume=auto")) == 0, capsys.readouterr().err
    after = {r["step"]: r for r in _finite_steps(plan.run_dir)}
    assert sorted(after) == [1, 2]
    for key in ("loss/total", "reward/proxy", "kl"):
        assert after[2][key] == pytest.approx(before[2][key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("config", PAPER, ids=lambda p: p.stem)
def test_paper_config_rehearsal(config, models, data, tmp_path, monkeypatch, capsys) -> None:
    plan = Plan(config, models, data, tmp_path / "runs")
    spy = RMInputs(monkeypatch)
    t0 = time.perf_counter()
    assert main(plan.argv()) == 0, capsys.readouterr().err
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
    from r2m.config import load_config
    from r2m.trainers.pg import RLRun

    plan = Plan(ROOT / "configs" / "paper" / "r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", models, data,
                tmp_path / "runs")
    cfg = load_config(ROOT / "configs" / "paper" / f"{plan.name}.yaml", plan.overrides)
    rl = RLRun(cfg)
    prompt = rl.train.texts[0]
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
