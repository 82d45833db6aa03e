"""Every name a TRL user passes has one rule, the rules' TRL defaults are the installed TRL's, and docs/TRL.md's
table is the registry; TRL's complete configs mean what they mean to TRL."""

from __future__ import annotations

from pathlib import Path

import pytest

from r2m.config.trl_map import GROUPED, MAPPERS, API_ONLY, map_trl
from r2m.config.trl_names import EXTRA_NAMES, RULES, Kind, _same, markdown_table, trl_sources, where_defined
from r2m.errors import ConfigError

pytest.importorskip("trl", reason="TRL is the trl extra (pip install -e '.[trl]')")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sources() -> dict:
    return trl_sources()


def test_every_trl_name_has_exactly_one_rule(sources) -> None:
    names = set(where_defined(sources))
    assert sorted(names - set(RULES)) == [], "TRL names without a rule in r2m.config.trl_names"
    assert set(RULES) - names == EXTRA_NAMES


def test_default_only_rules_state_the_installed_trls_defaults(sources) -> None:
    wrong = [(name, cls, values[name], rule.defaults) for name, rule in RULES.items() if rule.kind == Kind.DEFAULT_ONLY
             for cls, values in sources.items() if name in values and not _same(values[name], rule.defaults)]
    assert wrong == []


def test_every_mapped_name_has_a_mapping() -> None:
    mapped = {n for n, r in RULES.items() if r.kind == Kind.MAPPED}
    assert sorted(mapped - set(MAPPERS) - GROUPED - API_ONLY) == []


def test_docs_table_is_the_registry(sources) -> None:
    table = markdown_table(where_defined(sources))
    assert table in (ROOT / "docs" / "TRL.md").read_text(), "regenerate docs/TRL.md's table from markdown_table"


def _values(config) -> dict:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_a_grpo_config_means_what_it_means_to_trl() -> None:
    from trl import GRPOConfig, RLOOConfig

    args = GRPOConfig(output_dir="runs/g", use_cpu=True, bf16=False, per_device_train_batch_size=4,
                      gradient_accumulation_steps=2, steps_per_generation=4, num_generations=4, num_iterations=2,
                      max_steps=8, beta=0.04, max_completion_length=64, loss_type="grpo", report_to="none")
    got = map_trl(_values(args), "rl", complete=True, trainer="grpo").overrides
    assert (got["rl.prompts_per_step"], got["rl.minibatches"], got["rl.micro_batch_size"]) == (4, 2, 4)
    assert (got["rl.k"], got["rl.epochs"], got["rl.steps"]) == (4, 2, 2)  # 8 optimiser steps = 2 x (2 x 2)
    assert (got["rl.algorithm"], got["rl.kl_mode"], got["rl.kl_estimator"], got["rl.beta"]) == ("grpo", "loss", "k3",
                                                                                                  0.04)
    assert (got["rl.aggregation"], got["rl.lr"], got["rl.lr_schedule"], got["run.seed"]) == (
        "seq_mean_token_mean", 1e-6, "linear", 42)
    assert (got["run.root"], got["run.name"], got["rl.max_new_tokens"], got["run.device"]) == ("runs", "g", 64, "cpu")
    rloo = map_trl(_values(RLOOConfig(output_dir="r", use_cpu=True, bf16=False)), "rl", complete=True,
                   trainer="rloo").overrides
    assert (rloo["rl.algorithm"], rloo["rl.ratio_level"], rloo["rl.kl_mode"], rloo["rl.kl_estimator"],
            rloo["rl.beta"]) == ("rloo", "sequence", "reward", "k1", 0.05)
    assert "rl.steps" not in rloo  # max_steps=-1: num_train_epochs passes, counted once the prompts are read
    with pytest.raises(ConfigError, match="max_steps=7: expected a multiple of the 4 optimiser steps"):
        map_trl({**_values(args), "max_steps": 7}, "rl", complete=True, trainer="grpo")


def test_refused_names_are_named_with_their_reason() -> None:
    from trl import GRPOConfig

    args = GRPOConfig(output_dir="o", use_cpu=True, bf16=False, use_liger_kernel=True, loss_type="cispo",
                      mask_truncated_completions=True, push_to_hub=False, log_completions=True)
    with pytest.raises(ConfigError) as e:
        map_trl(_values(args), "rl", complete=True, trainer="grpo")
    text = str(e.value)
    assert "use_liger_kernel=True: no Liger kernels" in text and "loss_type='cispo'" in text
    assert "mask_truncated_completions=True: truncated completions are trained on" in text
    assert "log_completions" not in text  # logging only: no effect


def test_trl_defaults_r2m_does_not_reproduce_are_warned() -> None:
    from trl import RewardConfig

    m = map_trl(_values(RewardConfig(output_dir="o", use_cpu=True, bf16=False)), "rm", complete=True, trainer="reward")
    assert any(w.startswith("disable_dropout=True (TRL's default)") for w in m.warnings), m.warnings
    assert any("lr_scheduler_type='linear'" in w for w in m.warnings), m.warnings
    assert (m.overrides["rm.lr"], m.overrides["rm.batch_size"], m.overrides["rm.epochs"]) == (1e-4, 8, 3.0)
    assert m.overrides["reward.max_length"] == 1024
