"""A flat TRL recipe through `r2m rl --config`: examples/trl_grpo_recipe.yaml on the tiny world's models (R2M, LoRA),
TRL's command-line names over the file, and names r2m cannot honour refused by name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from r2m.cli import main
from r2m.runtime.runlog import read_metrics

pytest.importorskip("trl", reason="TRL is the trl extra (pip install -e '.[trl]')")
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "trl_grpo_recipe.yaml"
TINY = ["--bf16", "false", "--use_cpu", "true", "--dtype", "float32", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--num_generations", "2",
        "--max_completion_length", "8", "--report_to", "none", "run.progress=false"]


def test_recipe_starts_with_its_command() -> None:
    assert RECIPE.read_text().splitlines()[0] == "# r2m rl --config examples/trl_grpo_recipe.yaml"


def test_the_example_recipe_runs_grpo_with_r2m_and_lora(world_artifacts, tmp_path) -> None:
    policy, rm, files = world_artifacts
    out = tmp_path / "recipe"
    assert main(["rl", "--config", str(RECIPE), "--model_name_or_path", str(policy), "--reward_model_name_or_path",
                 str(rm), "--dataset_name", str(files.prompts), "--output_dir", str(out), *TINY,
                 f"data.pref_eval={files.pref_eval}"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    rl, lora = cfg["rl"], cfg["policy"]["lora"]
    assert (rl["algorithm"], rl["kl_mode"], rl["k"], rl["prompts_per_step"], rl["steps"]) == ("grpo", "loss", 2, 2, 2)
    assert (rl["lr"], rl["lr_schedule"], rl["warmup_steps"], rl["aggregation"]) == (1e-6, "cosine", 1, "token_mean")
    assert (lora["enabled"], lora["r"], lora["target_modules"]) == (True, 16, ["q_proj", "v_proj"])
    assert cfg["reward"]["r2m"]["enabled"] and cfg["run"]["keep_checkpoints"] == 2
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]  # no evaluation set (eval_strategy: no): no evaluation row
    assert all(math.isfinite(r["r2m/grebt"]) for r in rows)
    assert (out / "checkpoints" / "final" / "r2m").is_dir() and (out / "checkpoints" / "final" / "adapter").is_dir()


def test_names_r2m_cannot_honour_are_refused_by_name(tmp_path, capsys) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model_name_or_path: m\nuse_cpu: true\nbf16: false\nuse_vllm: true\nvllm_mode: server\n"
                      "use_liger_kernel: true\nscale_rewards: batch\nnot_a_trl_name: 1\n")
    assert main(["rl", "--config", str(recipe)]) == 2
    assert "not_a_trl_name: not TRL's names for r2m rl" in capsys.readouterr().err
    recipe.write_text(recipe.read_text().replace("not_a_trl_name: 1\n", ""))
    assert main(["rl", "--config", str(recipe), "--top_p", "0.9"]) == 2
    err = capsys.readouterr().err
    for reason in ("vllm_mode='server': colocate only", "use_liger_kernel=True: no Liger kernels",
                   "scale_rewards='batch'", "top_p=0.9: r2m samples from the full distribution"):
        assert reason in err, err
    assert main(["sft", "--config", str(recipe)]) == 2
    assert "a flat TRL recipe configures a trainer: r2m rl" in capsys.readouterr().err


def test_a_reward_recipe_maps_onto_r2m_rm(tmp_path, capsys) -> None:
    recipe = tmp_path / "reward.yaml"
    recipe.write_text("model_name_or_path: my/model\ndataset_name: trl-lib/ultrafeedback_binarized\nuse_cpu: true\n"
                      "bf16: false\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 2\nmax_length: 512\n"
                      "num_train_epochs: 1\nlearning_rate: 1.0e-5\neval_strategy: steps\nlr_scheduler_type: cosine\n")
    assert main(["rl", "--config", str(recipe)]) == 2  # RewardConfig's max_length is not a GRPO name
    assert "max_length: r2m rl does not take it" in capsys.readouterr().err
    from r2m.cli import parse_args, resolve_config

    cfg = resolve_config(parse_args(["rm", "--config", str(recipe)]))[0]
    assert (cfg.rm.init_from, cfg.rm.batch_size, cfg.rm.epochs, cfg.rm.lr, cfg.reward.max_length) == (
        "my/model", 8, 1.0, 1e-5, 512)
    d = cfg.data
    assert (d.pref_train, d.pref_eval, d.splits.pref_train, d.splits.pref_eval) == (
        "trl-lib/ultrafeedback_binarized", "trl-lib/ultrafeedback_binarized", "train", "test")


def test_recipe_reward_funcs_without_a_reward_model(world_artifacts, tmp_path, monkeypatch) -> None:
    """GRPO's script argument reward_funcs: TRL's names and dotted import paths, weighted, no reward model."""
    policy, _, files = world_artifacts
    (tmp_path / "my_rewards.py").write_text("def short(completions, **kwargs):\n"
                                            "    return [0.7 if len(c) < 40 else 0.0 for c in completions]\n")
    monkeypatch.chdir(tmp_path)  # as TRL's script: modules beside the recipe
    recipe = tmp_path / "funcs.yaml"
    recipe.write_text(f"model_name_or_path: {policy}\ndataset_name: {files.prompts}\noutput_dir: {tmp_path / 'f'}\n"
                      "reward_funcs: [my_rewards.short, get_soft_overlong_punishment]\nreward_weights: [1.0, 0.5]\n")
    assert main(["rl", "--config", str(recipe), *TINY, "--max_steps", "1"]) == 0
    rows = read_metrics(tmp_path / "f" / "metrics.jsonl")
    assert len(rows) == 1 and 0.0 <= rows[0]["reward"] <= 0.7  # the overlong term is 0 under 1280 - 256 tokens
    cfg = yaml.safe_load((tmp_path / "f" / "config.yaml").read_text())
    assert cfg["reward"]["source"] == "gold"  # no reward model is loaded
    recipe.write_text(recipe.read_text().replace("my_rewards.short", "accuracy_reward"))
    assert main(["rl", "--config", str(recipe), *TINY]) == 2
