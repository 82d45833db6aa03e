"""Config parsing, overrides, validation messages and the shipped YAML files."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from r2m.config.enums import Algorithm
from r2m.config.root import Config
from r2m.errors import ConfigError
from r2m.config.training import RLConfig
from r2m.config.parsing import field_docs, load_config, replace_path, to_dict

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_is_the_world() -> None:
    cfg = load_config()
    assert cfg.rl.algorithm is Algorithm.RLOO
    assert cfg.policy.path is None and cfg.reward.path is None  # world artifacts
    assert cfg.policy.arch.hidden_size != cfg.reward.arch.hidden_size  # heterogeneous by default


def test_overrides_are_yaml_typed() -> None:
    assert load_config(None, ["rl.lr=1e-3"]).rl.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string
    cfg = load_config(None, ["rl.k=8", "rl.beta=0.1", "run.log_with=[]", "rl.algorithm=grpo", "data.sft=x.jsonl"])
    assert cfg.rl.k == 8 and cfg.rl.beta == 0.1 and cfg.run.log_with == ()
    assert cfg.rl.algorithm is Algorithm.GRPO and cfg.data.sft == "x.jsonl"


@pytest.mark.parametrize(
    "override, message",
    [
        ("rl.nope=1", "rl.nope: unknown key"),
        ("nope.x=1", "nope: unknown key"),
        ("rl.k=1", "rl.k: expected >= 2 for rloo"),
        ("rl.k=two", "rl.k: expected an integer"),
        ("rl.beta=-1", "rl.beta: expected >= 0"),
        ("rl.lr=fast", "rl.lr: expected a number"),
        ("rl.clip_eps=1.5", "rl.clip_eps: expected in (0, 1)"),
        ("rl.algorithm=dpo", "rl.algorithm: expected one of"),
        ("rl.minibatches=3", "rl.minibatches: expected a divisor of prompts_per_step*k=256"),
        ("rl.clip_ratio_c=1.0", "rl.clip_ratio_c: expected > 1 or null"),
        ("rl.clip_eps_high=0", "rl.clip_eps_high: expected > 0 or null"),
        ("rl.warmup_steps=-1", "rl.warmup_steps: expected >= 0"),
        ("rl.lr_schedule=step", "rl.lr_schedule: expected one of"),
        ("reward.r2m.init=xavier", "reward.r2m.init: expected one of"),
        ("world.tau=0", "world.tau: expected > 0"),
        ("world.mixture.swap=-0.1", "world.mixture.swap: expected >= 0"),
        ("policy.arch.num_heads=3", "policy.arch.num_heads: expected a divisor of hidden_size"),
        ("reward.arch.hidden_size=4", "reward.arch.hidden_size: expected >= 8"),
        ("run.device=tpu", "run.device: expected one of auto, cpu, cuda"),
        ("run.progress=yes please", "run.progress: expected true or false"),
        ("rl=3", "rl: expected a mapping"),
        ("justtext", "expected the form section.key=value"),
    ],
)
def test_validation_names_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


@pytest.mark.parametrize("algorithm", ["reinforce_pp", "reinforce_pp_baseline", "ppo"])
def test_sequence_ratio_needs_a_sequence_advantage(algorithm: str) -> None:
    with pytest.raises(ConfigError, match=f"rl.ratio_level: expected token for {algorithm}"):
        load_config(None, [f"rl.algorithm={algorithm}", "rl.ratio_level=sequence"])
    for ok in ("rloo", "grpo", "dr_grpo", "remax"):
        assert load_config(None, [f"rl.algorithm={ok}", "rl.ratio_level=sequence"]).rl.ratio_level == "sequence"


def test_every_rl_config_states_its_ratio_level() -> None:
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if "worlds" in path.parts:  # world presets (docs/WORLDS.md) set no RL fields: they go with an RL config
            assert "rl:" not in path.read_text(), f"{path}: a world preset sets world/ser fields only"
        elif "accelerate" not in path.parts:
            assert "ratio_level:" in path.read_text(), f"{path}: say which ratio level (token or sequence) it uses"


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(lst)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("rl:\n  steps: 3\n  stepz: 4\n")
    with pytest.raises(ConfigError, match=r"unknown.yaml: rl.stepz: unknown key"):
        load_config(unknown)


def test_configs_are_frozen_and_replace_makes_a_new_one() -> None:
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rl.k = 3  # type: ignore[misc]
    new = replace_path(cfg, rl__k=8, run__name="x")
    assert (cfg.rl.k, cfg.run.name) == (4, "default") and (new.rl.k, new.run.name) == (8, "x")


def test_round_trip_through_dict() -> None:
    cfg = load_config(None, ["rl.algorithm=grpo", "demo.arms=[rloo, gold]"])
    from r2m.config.parsing import _build

    assert _build(Config, to_dict(cfg)) == cfg


def _dataclasses(cls) -> list[type]:
    out = [cls]
    for tp in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(tp):
            out += _dataclasses(tp)
    return out


def test_every_field_has_a_docstring() -> None:
    for cls in set(_dataclasses(Config)):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse_and_start_with_their_command(path: Path) -> None:
    if "accelerate" in path.parts:
        pytest.skip("accelerate launcher configs are not r2m configs")
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("r2m " in first or "make " in first), f"{path}: first line {first!r}"
    load_config(path)


def test_demo_config_parses() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.run.name == "demo" and "rloo" in cfg.demo.arms
    assert RLConfig().steps == cfg.rl.steps


def test_sft_and_rm_share_one_definition_of_the_optimiser_fields() -> None:
    """sft and rm inherit the loop's fields from SupervisedConfig: their YAML keys, own defaults and the section
    named in errors."""
    from r2m.config.training import RMConfig, SFTConfig, SupervisedConfig

    shared = {f.name for f in dataclasses.fields(SupervisedConfig)}
    assert shared == {"epochs", "batch_size", "lr", "weight_decay", "warmup_ratio", "max_grad_norm", "max_steps",
                      "log_every", "save_every"}
    assert set(to_dict(SFTConfig())) == shared | {"max_length"} and set(to_dict(RMConfig())) == shared | {"init_from"}
    assert (SFTConfig().epochs, SFTConfig().lr, RMConfig().epochs, RMConfig().lr) == (1.0, 3e-3, 2.0, 1e-3)
    for section in ("sft", "rm"):
        with pytest.raises(ConfigError, match=rf"^{section}\.warmup_ratio: expected in \[0, 1\)"):
            load_config(None, [f"{section}.warmup_ratio=1.0"])
