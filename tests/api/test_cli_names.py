"""The CLI's TRL-style arguments: ``--config FILE``, ``--section.key value``, TRL's names per subcommand,
``--help-config`` per subcommand, ``--help`` before torch, a model path a command would not read refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r2m.cli import main, parse_args, resolve_config
from r2m.config.training import RLConfig as RLSection
from r2m.config.parsing import field_docs, load_config
from r2m.config.trl_map import map_trl
from r2m.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _config(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _resolved(argv: list[str]):
    return resolve_config(parse_args(argv))[0]


def test_dotted_flags_and_trl_names(capsys, tmp_path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("rl:\n  steps: 7\n")
    got = _config(capsys, ["config", "--config", str(cfg_file), "--rl.beta", "0.05", "--rl.temperature=0.7",
                           "--num_generations", "3", "--max_completion_length", "9", "--epsilon", "0.3",
                           "--learning_rate", "2e-5", "--output_dir", str(tmp_path / "out" / "run1"),
                           "--report_to", "none", "--save_steps", "5", "--seed", "11", "--bf16",
                           "--model_name_or_path", "some/model", "--dataset_name", "p.jsonl", "run.threads=1"])
    rl, run = got["rl"], got["run"]
    assert (rl["steps"], rl["beta"], rl["temperature"], rl["k"], rl["max_new_tokens"]) == (7, 0.05, 0.7, 3, 9)
    assert (rl["clip_eps"], rl["lr"], rl["save_every"]) == (0.3, 2e-5, 5)
    assert (run["root"], run["name"], run["log_with"], run["seed"]) == (str(tmp_path / "out"), "run1", [], 11)
    assert (run["mixed_precision"], run["threads"]) == ("bf16", 1)
    assert (got["policy"]["path"], got["data"]["prompts"], got["data"]["formats"]["prompts"]) == (
        "some/model", "p.jsonl", "trl")


def test_learning_rate_and_batch_follow_the_command() -> None:
    assert map_trl({"learning_rate": 0.01}, "rm").overrides == {"rm.lr": 0.01}
    assert map_trl({"bf16": False}, "rl").overrides == {"run.mixed_precision": "no"}
    # r2m rm: pairs per optimiser step = per_device_train_batch_size x GA x processes
    assert map_trl({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}, "rm",
                   world=2).overrides == {"rm.batch_size": 16}
    # r2m rl: a generation batch of pdtbs x processes x steps_per_generation completions, num_generations each
    got = map_trl({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "num_generations": 4,
                   "steps_per_generation": 4}, "rl", base=lambda d: {"rl.epochs": 1}.get(d)).overrides
    assert (got["rl.prompts_per_step"], got["rl.minibatches"], got["rl.micro_batch_size"], got["rl.k"]) == (4, 2, 4, 4)


def test_unknown_and_bad_values_are_refused(capsys) -> None:
    assert main(["config", "--rl.nope", "1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["config", "--bf16", "maybe"]) == 2
    assert "bf16: expected true or false" in capsys.readouterr().err
    # names r2m cannot honour: all of them, each with its reason
    assert main(["rl", "--use_liger_kernel", "true", "--top_k", "50", "--loss_type", "cispo"]) == 2
    err = capsys.readouterr().err
    assert "use_liger_kernel=True: no Liger kernels" in err and "top_k=50: r2m samples from the full" in err
    assert "loss_type='cispo'" in err
    assert main(["rm", "--num_generations", "4"]) == 2  # a GRPO name: not r2m rm's
    assert "num_generations: r2m rm does not take it" in capsys.readouterr().err


def test_help_config_lists_only_what_the_command_reads(capsys) -> None:
    assert main(["rl", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "rl.k = 4\n    " + " ".join(field_docs(RLSection)["k"].split()) + "\n" in out
    assert "reward.r2m.enabled = " in out and "(undocumented)" not in out
    assert "data.sft = " not in out and "ser.max_loops" not in out and "eval.judge.model" not in out
    assert main(["rm", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "rm.lr = " in out and "reward.lora.r = " in out and "data.pref_train = " in out
    assert "rl.k = " not in out and "policy.path" not in out and "reward.r2m" not in out and "data.prompts" not in out


def test_help_and_argument_errors_come_before_torch() -> None:
    code = ("import json, sys\nfrom r2m.cli import main\nout = {}\nfor argv in (['rl', '--help'], ['rl', "
            "'--no-such-flag'], ['rm', '--help-config']):\n    try:\n        main(argv)\n    except SystemExit as e:\n"
            "        out[argv[1]] = e.code\nprint(json.dumps({'codes': out, 'torch': 'torch' in sys.modules}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == {"codes": {"--help": 0, "--no-such-flag": 2}, "torch": False}, got


def test_model_name_or_path_names_the_model_each_command_trains(tmp_path) -> None:
    model = str(tmp_path / "my-model")
    assert _resolved(["config", "--model_name_or_path", model]).policy.path == model
    assert _resolved(["sft", "--model_name_or_path", model, "data.sft=s.jsonl"]).policy.path == model
    rm = _resolved(["rm", "--model_name_or_path", model, "data.pref_train=p.jsonl"])
    assert (rm.rm.init_from, rm.policy.path) == (model, None)  # the RM it trains, not the policy
    assert _resolved(["eval", "rm", "--model_name_or_path", model]).reward.path == model
    with pytest.raises(ConfigError, match="model_name_or_path: r2m ser trains no single model"):
        _resolved(["ser", "--model_name_or_path", model])


def test_a_model_path_the_command_does_not_read_is_refused(tmp_path, capsys) -> None:
    """`r2m rm policy.path=X` trained the world's RM on the user's pairs: the policy path is refused now."""
    model = str(tmp_path / "my-rm")
    argv = ["rm", f"policy.path={model}", "data.pref_train=p.jsonl", "data.pref_eval=e.jsonl"]
    with pytest.raises(ConfigError, match=r"policy.path=.*r2m rm does not read it \(it reads rm.init_from"):
        _resolved(argv)
    with pytest.raises(ConfigError, match=r"reward.path=.*r2m sft does not read it"):
        _resolved(["sft", f"reward.path={model}", "data.sft=s.jsonl"])
    # In a config file shared between commands: refused where the command's own model would be the world's toy one
    shared = tmp_path / "shared.yaml"
    shared.write_text(f"policy:\n  path: {model}\ndata:\n  pref_train: p.jsonl\n")
    with pytest.raises(ConfigError, match="r2m rm trains rm.init_from, which is unset: it would train the gold"):
        _resolved(["rm", "-c", str(shared)])
    assert _resolved(["rm", "-c", str(shared), f"rm.init_from={model}"]).rm.init_from == model  # logged only
    assert main(argv) == 2 and "does not read it" in capsys.readouterr().err


def test_a_users_policy_gets_real_model_lengths(tmp_path) -> None:
    """The world's 64 prompt tokens (cut from the left) and 10 new tokens are toy lengths for a user's model."""
    user = load_config(None, [f"policy.path={tmp_path / 'my-policy'}"])
    assert (user.data.max_prompt_tokens, user.data.overlong.value, user.rl.max_new_tokens) == (1024, "skip", 512)
    world = load_config(None, [])
    assert (world.data.max_prompt_tokens, world.data.overlong.value, world.rl.max_new_tokens) == (64, "truncate", 10)
    own = load_config(None, [f"policy.path={tmp_path / 'p'}", "rl.max_new_tokens=16", "data.max_prompt_tokens=32"])
    assert (own.data.max_prompt_tokens, own.rl.max_new_tokens) == (32, 16)
    cached = load_config(None, [f"run.root={tmp_path}", f"policy.path={tmp_path / 'world' / 'policy-x' / 'model'}"])
    assert cached.rl.max_new_tokens == 10  # the world's own policy, by path


def test_evaluation_never_reads_the_training_split(tmp_path) -> None:
    with pytest.raises(ConfigError, match="data.splits.eval_prompts: expected a split other than data.prompts'"):
        load_config(None, ["data.prompts=org/ds", "data.eval_prompts=org/ds"])
    with pytest.raises(ConfigError, match="data.pref_eval: expected another file than data.pref_train"):
        load_config(None, ["data.pref_train=p.jsonl", "data.pref_eval=p.jsonl", "data.eval_split=test"])
    cfg = load_config(None, ["data.prompts=org/ds", "data.eval_prompts=org/ds", "data.eval_split=test"])
    assert cfg.data.eval_split == "test"
