"""The CLI's TRL-style arguments: ``--config FILE``, ``--section.key value``, TRL's names, ``--help-config``."""

from __future__ import annotations

import pytest
import yaml

from r2m.cli import main
from r2m.config import RLConfig as RLSection, field_docs
from r2m.config.trl_names import cli_overrides


def _config(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return yaml.safe_load(capsys.readouterr().out)


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
    assert (got["policy"]["path"], got["data"]["prompts"]) == ("some/model", "p.jsonl")


def test_learning_rate_follows_the_command() -> None:
    assert cli_overrides(["rm", "--learning_rate", "0.01"], "rm") == ["rm", "rm.lr=0.01"]
    assert cli_overrides(["rl", "--bf16", "false", "--out", "x"]) == ["rl", "run.mixed_precision=no", "--out", "x"]


def test_unknown_and_bad_values_are_refused(capsys) -> None:
    assert main(["config", "--rl.nope", "1"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["config", "--bf16", "maybe"])
    assert stop.value.code == 2 and "bf16: expected true or false" in capsys.readouterr().err


def test_help_config_prints_every_field(capsys) -> None:
    assert main(["rl", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "rl.k = 4\n    " + " ".join(field_docs(RLSection)["k"].split()) + "\n" in out
    assert "reward.r2m.enabled = " in out and "(undocumented)" not in out
