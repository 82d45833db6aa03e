"""The GPU configs: configs/paper/*.yaml (r2m configs sized after the papers), configs/accelerate/*.yaml
(launcher setups) and the README's "Run on your GPUs" commands. Nothing is downloaded: only configs are
parsed, by r2m's own loader and by accelerate's, and every command line by the parsers that would run it."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest

from r2m.cli import build_parser
from r2m.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "configs" / "paper").glob("*.yaml"))
ACCELERATE = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
R2M_SUBCOMMANDS = ("world", "sft", "rm", "rl", "eval", "analyze", "ser", "bench", "demo", "config")


def _first_line(path: Path) -> str:
    return path.read_text().splitlines()[0]


def _command(line: str) -> list[str]:
    """The shell words of a ``# command`` comment line (or of a README command line)."""
    return shlex.split(line[1:] if line.startswith("#") else line)


def _r2m_argv(words: list[str]) -> list[str]:
    """The r2m argument list of ``r2m ...``, ``python -m r2m ...`` or ``accelerate launch ... -m r2m ...``."""
    if words[0] == "r2m":
        return words[1:]
    for i in range(len(words) - 1):
        if words[i] == "-m" and words[i + 1] == "r2m":
            return words[i + 2:]
    raise AssertionError(f"not an r2m command: {' '.join(words)}")


def _launch_args(words: list[str]) -> list[str]:
    """The ``accelerate launch`` arguments of ``accelerate launch ARGS -m r2m ...`` (ARGS and ``-m r2m ...``)."""
    assert words[:2] == ["accelerate", "launch"], words
    return words[2:]


def _check_r2m_argv(argv: list[str]) -> None:
    """Parse like ``r2m`` would, then resolve the config with the overrides (no model or data is touched)."""
    assert argv and argv[0] in R2M_SUBCOMMANDS, argv
    args = build_parser().parse_args(argv)  # SystemExit on an unknown flag or subcommand
    overrides = list(getattr(args, "overrides", []))
    load_config(args.config, overrides)
    if args.config is not None:
        assert (ROOT / args.config).is_file(), args.config


def _validate_launch(launch_args: list[str]):
    """What ``accelerate launch`` does with its arguments before it starts any process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(launch_args)
    return _validate_launch_command(args)


# --------------------------------------------------------------------------------------------
# configs/paper
# --------------------------------------------------------------------------------------------


def test_there_are_paper_configs() -> None:
    names = {p.name for p in PAPER}
    for expected in ("r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", "r2m_qwen2.5-3b_ultrafeedback_grpo.yaml",
                     "r2m_llama3-8b_ultrafeedback_rloo.yaml", "r2m_pythia2.8b_tldr.yaml", "ser_hh_rlhf.yaml",
                     "ser_ultrafeedback.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_config_loads_and_names_itself_in_its_launch_command(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    load_config(path)
    lines = path.read_text().splitlines()
    words = _command(lines[0])
    assert lines[0].startswith("# ") and (words[0] == "r2m" or words[:2] == ["accelerate", "launch"]), lines[0]
    argv = _r2m_argv(words)
    assert argv[argv.index("-c") + 1] == f"configs/paper/{path.name}", lines[0]
    _check_r2m_argv(argv)
    if words[0] == "accelerate":
        launch = _launch_args(words)
        config_file = launch[launch.index("--config_file") + 1]
        assert (ROOT / config_file).is_file() and config_file.startswith("configs/accelerate/")
        _validate_launch(launch)
    assert re.match(r"# GPUs: \d+x\d+GB", lines[1]), f"{path}: second line should say the GPUs: {lines[1]!r}"


@pytest.mark.parametrize("path", PAPER + ACCELERATE, ids=lambda p: p.name)
def test_commands_in_comments_parse(path: Path, monkeypatch) -> None:
    """Commands quoted in a config's comments (an SFT route, an extra evaluation, ...) parse as well."""
    monkeypatch.chdir(ROOT)
    lines = [line[line.index("#"):] for line in path.read_text().splitlines()[1:] if "#" in line]  # comment parts
    commands = [line[1:].strip() for line in lines if re.match(r"#\s+(r2m |accelerate launch )", line)]
    commands += [c for line in lines for c in re.findall(r"`((?:r2m|accelerate launch) [^`]*)`", line)]
    for command in commands:
        words = shlex.split(command)
        _check_r2m_argv(_r2m_argv(words))
        if words[0] == "accelerate":
            _validate_launch(_launch_args(words))


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_configs_hold_no_fields_in_progress(path: Path) -> None:
    """Fields being added elsewhere are named in comments only: in the YAML they would not load today."""
    import yaml

    data = yaml.safe_load(path.read_text())
    flat = set()

    def walk(node, prefix=""):
        for k, v in node.items():
            flat.add(prefix + k)
            if isinstance(v, dict):
                walk(v, prefix + k + ".")

    walk(data)
    for key in ("run.mixed_precision", "policy.lora", "policy.gradient_checkpointing", "reward.lora",
                "reward.gradient_checkpointing", "rl.generator", "rl.vllm"):
        assert key not in flat, f"{path.name}: {key}"


def test_r2m_paper_values() -> None:
    """The values the R2M paper states (Sec. 5, App. G.3-G.4)."""
    qwen = load_config(ROOT / "configs/paper/r2m_qwen2.5-3b_ultrafeedback_rloo.yaml")
    llama = load_config(ROOT / "configs/paper/r2m_llama3-8b_ultrafeedback_rloo.yaml")
    tldr = load_config(ROOT / "configs/paper/r2m_pythia2.8b_tldr.yaml")
    for cfg in (qwen, llama):
        assert (cfg.rl.prompts_per_step, cfg.rl.k, cfg.rl.temperature, cfg.rl.max_new_tokens, cfg.rl.epochs) == \
               (64, 8, 0.7, 512, 2)
        assert cfg.rl.steps * cfg.rl.prompts_per_step * cfg.rl.k == 51_200
        assert cfg.data.format == "ultrafeedback" and cfg.data.max_response_tokens == 512
        assert cfg.reward.path == "Skywork/Skywork-Reward-V2-Llama-3.1-8B" and cfg.reward.r2m.enabled
        assert (cfg.reward.r2m.lr, cfg.reward.r2m.alpha, cfg.reward.r2m.inner_dim) == (1e-6, 0.3, 2048)
        assert cfg.policy.dtype == cfg.reward.dtype == "bfloat16"
    assert (qwen.rl.lr, qwen.reward.r2m.omega_floor) == (6e-6, 0.7)
    assert (llama.rl.lr, llama.reward.r2m.omega_floor) == (1e-6, 0.6)
    assert (tldr.rl.lr, tldr.reward.r2m.omega_floor, tldr.rl.k, tldr.rl.max_new_tokens) == (3e-6, 0.6, 4, 50)
    assert (tldr.reward.r2m.lr, tldr.rl.prompts_per_step) == (5e-7, 2048)
    grpo = load_config(ROOT / "configs/paper/r2m_qwen2.5-3b_ultrafeedback_grpo.yaml")
    assert grpo.rl.algorithm.value == "grpo" and grpo.rl.lr == qwen.rl.lr


def test_ser_paper_values() -> None:
    """The values the SER paper states (Sec. 3.1, App. C.3, D.1)."""
    for name in ("ser_hh_rlhf.yaml", "ser_ultrafeedback.yaml"):
        cfg = load_config(ROOT / "configs/paper" / name)
        s = cfg.ser
        assert (s.sft_frac, s.rm_frac, s.ppo_frac, s.seed_frac) == (0.3, 0.65, 0.05, 0.15)
        assert (s.tau_high, s.tau_low, s.tau_delta) == (0.55, 0.45, 0.3)
        assert s.lora and (s.lora_r, s.lora_alpha, s.lora_dropout) == (8, 32, 0.1)
        assert (s.ppo_beta, s.ppo_kl_adaptive, s.ppo_kl_target) == (0.2, True, 0.1)
        assert (cfg.rm.lr, cfg.rm.epochs) == (2e-5, 2)
        assert (cfg.rl.lr, cfg.rl.max_new_tokens, cfg.rl.epochs, cfg.rl.prompts_per_step) == (1.4e-5, 256, 4, 8)
        # SER reads the pairs without a tokenizer: a length filter would be refused there.
        assert cfg.data.max_response_tokens == 0


# --------------------------------------------------------------------------------------------
# configs/accelerate
# --------------------------------------------------------------------------------------------


def test_there_are_accelerate_configs() -> None:
    assert {p.name for p in ACCELERATE} >= {"ddp.yaml", "ddp_cpu.yaml", "zero2.yaml", "zero3.yaml", "fsdp.yaml"}


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_parses_and_begins_with_its_command(path: Path, monkeypatch) -> None:
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    monkeypatch.chdir(ROOT)
    cfg = load_config_from_file(str(path))  # accelerate's own loader: unknown keys are errors
    assert isinstance(cfg, ClusterConfig)
    first = _first_line(path)
    words = _command(first)
    launch = _launch_args(words)
    assert launch[launch.index("--config_file") + 1] == f"configs/accelerate/{path.name}", first
    _check_r2m_argv(_r2m_argv(words))
    _validate_launch(launch)
    # Nested keys reach `accelerate launch` as its own arguments (fsdp_config.x -> --fsdp_x): none may be unknown.
    from accelerate.commands.launch import launch_command_parser

    known = vars(launch_command_parser().parse_args(["script.py"]))
    for key in cfg.fsdp_config:
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in known, f"{path.name}: fsdp_config.{key}"
    for key in cfg.deepspeed_config:
        assert key in known, f"{path.name}: deepspeed_config.{key}"


def _plugin_env(path: Path) -> dict[str, str]:
    """The ACCELERATE_*/FSDP_* environment `accelerate launch --config_file path` gives each process."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args, defaults, mp_from_config = _validate_launch(["--config_file", str(path), "-m", "r2m", "config"])
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_distributed_setups() -> None:
    """Each launcher setup builds the accelerate plugin it means to (deepspeed itself need not be installed)."""
    from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
    from accelerate.commands.config.config_args import load_config_from_file

    acc = ROOT / "configs" / "accelerate"
    ddp = load_config_from_file(str(acc / "ddp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.mixed_precision == "bf16"
    cpu = load_config_from_file(str(acc / "ddp_cpu.yaml"))
    assert cpu.use_cpu and cpu.num_processes == 2 and cpu.mixed_precision == "no"
    # torchrun starts the two processes; run.device=cpu joins them over gloo (Accelerator(cpu=True)).
    assert cpu.distributed_type == DistributedType.MULTI_GPU and "run.device=cpu" in _first_line(acc / "ddp_cpu.yaml")

    for name, stage in (("zero2.yaml", 2), ("zero3.yaml", 3)):
        env = _plugin_env(acc / name)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        with mock.patch.dict(os.environ, env):
            plugin = DeepSpeedPlugin()
        zero = plugin.deepspeed_config["zero_optimization"]
        assert plugin.zero_stage == stage
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "none"
        assert zero["stage3_gather_16bit_weights_on_model_save"] == (stage == 3)
        assert plugin.zero3_init_flag == (stage == 3)

    env = _plugin_env(acc / "fsdp.yaml")
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with mock.patch.dict(os.environ, env):
        fsdp = FullyShardedDataParallelPlugin()
    assert fsdp.fsdp_version == 2 and fsdp.reshard_after_forward is True  # FSDP2's FULL_SHARD
    assert fsdp.state_dict_type.name == "FULL_STATE_DICT"
    assert fsdp.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


# --------------------------------------------------------------------------------------------
# README "Run on your GPUs"
# --------------------------------------------------------------------------------------------


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Run on your GPUs", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def test_readme_gpu_section_commands(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    commands = _readme_commands()
    r2m_commands = [c for c in commands if c.startswith(("r2m ", "accelerate launch "))]
    assert len(r2m_commands) >= 7, commands
    launchers = set()
    for line in r2m_commands:
        words = shlex.split(line)
        _check_r2m_argv(_r2m_argv(words))
        if words[0] == "accelerate":
            launch = _launch_args(words)
            launchers.add(launch[launch.index("--config_file") + 1])
            _validate_launch(launch)
    # single GPU (no launcher), DDP, ZeRO-3 and FSDP are all shown
    assert any(c.startswith("r2m rl ") for c in r2m_commands)
    assert {"configs/accelerate/ddp.yaml", "configs/accelerate/zero3.yaml", "configs/accelerate/fsdp.yaml"} <= launchers
    for path in re.findall(r"configs/[\w./-]+\.yaml", "\n".join(commands)):
        assert (ROOT / path).is_file(), path


def test_a_typo_in_a_flag_fails(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        _check_r2m_argv(["rl", "--confg", "configs/paper/r2m_pythia2.8b_tldr.yaml"])
    from r2m.errors import ConfigError

    with pytest.raises(ConfigError):
        _check_r2m_argv(["rl", "-c", "configs/paper/r2m_pythia2.8b_tldr.yaml", "rl.prompts_per_stepp=8"])
