"""The GPU configs: configs/paper/*.yaml (r2m configs sized after the papers), configs/accelerate/*.yaml
(launcher setups) and the README's "Run on your GPUs" commands. Nothing is downloaded: only configs are
parsed, by r2m's own loader and by accelerate's, and every command line by the parsers that would run it.
Launch commands also go through the checks r2m makes at start-up for their process count and backend
(``check_data_parallel``, ``configure_backend``), so each runs as written up to the model download."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from r2m.cli import parse_args
from r2m.config.parsing import load_config

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
    """The r2m argument list of ``r2m ...``, ``python -m r2m ...``, ``torchrun ... -m r2m ...`` or
    ``accelerate launch ... -m r2m ...``."""
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


def _check_r2m_argv(argv: list[str]):
    """Parse like ``r2m`` would, then resolve the config with the overrides (no model or data is touched)."""
    assert argv and argv[0] in R2M_SUBCOMMANDS, argv
    args = parse_args(argv)  # as `r2m` parses: SystemExit on an unknown flag or subcommand
    overrides = list(getattr(args, "overrides", []))
    cfg = load_config(args.config, overrides)
    if args.config is not None:
        assert (ROOT / args.config).is_file(), args.config
    return args, cfg


def _validate_launch(launch_args: list[str]):
    """What ``accelerate launch`` does with its arguments before it starts any process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(launch_args)
    return _validate_launch_command(args)


def _launch_env(validated) -> dict[str, str]:
    """The ACCELERATE_*/FSDP_* environment ``accelerate launch`` gives each process, from validated arguments."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args, defaults, mp_from_config = validated
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def _deepspeed_plugin(env: dict[str, str]):
    from accelerate.utils import DeepSpeedPlugin

    with mock.patch.dict(os.environ, env):
        return DeepSpeedPlugin()  # deepspeed itself need not be installed


def _check_start(line: str) -> None:
    """Parse a command line, then make r2m's start-up checks for its process count and backend.

    ``r2m rl``: check_data_parallel for N processes and, under DeepSpeed, configure_backend (ZeRO-3, PPO and
    rl.micro_batch_size refusals). ``r2m ser``: the same for its PPO stage. The shipped DeepSpeed commands
    are ``r2m rl`` ones.
    """
    from accelerate.utils import DistributedType

    from r2m.recipes.rl.setup import check_data_parallel, configure_backend
    from r2m.recipes.ser_ppo import ppo_config

    words = shlex.split(line[1:] if line.startswith("#") else line)
    args, cfg = _check_r2m_argv(_r2m_argv(words))
    processes, deepspeed = 1, None
    if words[0] == "accelerate":
        validated = _validate_launch(_launch_args(words))
        processes = validated[0].num_processes
        if validated[0].use_deepspeed:
            deepspeed = _deepspeed_plugin(_launch_env(validated))
    elif words[0] == "torchrun":
        flag = next(w for w in words if w.startswith("--nproc_per_node"))
        processes = int(flag.split("=", 1)[1] if "=" in flag else words[words.index(flag) + 1])
    rl = None
    if args.command == "rl":
        rl = cfg.rl
    elif args.command == "ser" and cfg.ser.ppo:
        rl = ppo_config(cfg, Path("rm"), Path("prompts.jsonl")).rl
    if rl is not None:
        check_data_parallel(rl, processes)
    if deepspeed is not None:
        assert args.command == "rl", f"{args.command} cannot run under DeepSpeed yet: {line}"
        acc = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, num_processes=processes,
                              mixed_precision="bf16", state=SimpleNamespace(deepspeed_plugin=deepspeed))
        configure_backend(acc, cfg)
        assert deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] >= 1


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
    if words[0] == "accelerate":
        launch = _launch_args(words)
        config_file = launch[launch.index("--config_file") + 1]
        assert (ROOT / config_file).is_file() and config_file.startswith("configs/accelerate/")
    _check_start(lines[0])
    assert re.match(r"# GPUs: \d+x\d+GB", lines[1]), f"{path}: second line should say the GPUs: {lines[1]!r}"


@pytest.mark.parametrize("path", PAPER + ACCELERATE, ids=lambda p: p.name)
def test_commands_in_comments_parse(path: Path, monkeypatch) -> None:
    """Commands quoted in a config's comments (an SFT route, an extra evaluation, ...) parse as well."""
    monkeypatch.chdir(ROOT)
    lines = [line[line.index("#"):] for line in path.read_text().splitlines()[1:] if "#" in line]  # comment parts
    commands = [line[1:].strip() for line in lines if re.match(r"#\s+(r2m |accelerate launch )", line)]
    commands += [c for line in lines for c in re.findall(r"`((?:r2m|accelerate launch) [^`]*)`", line)]
    for command in commands:
        _check_start(command)


@pytest.mark.parametrize("path", PAPER + ACCELERATE + [ROOT / "README.md"], ids=lambda p: p.name)
def test_no_remarks_about_fields_in_progress(path: Path) -> None:
    """The memory, precision, LoRA and vLLM fields exist: no config or README line may say they are coming."""
    text = path.read_text()
    if path.name == "README.md":
        text = text.split("## Run on your GPUs", 1)[1].split("\n## ", 1)[0]
    for phrase in ("in progress", "once that field lands", "does not fit yet", "until those passes", "chunked rollout"):
        assert phrase not in text.lower(), f"{path.name}: {phrase!r}"


def test_paper_configs_use_the_memory_fields() -> None:
    """Paper-scale rollouts are chunked, activations checkpointed, compute in bf16."""
    for name in ("r2m_qwen2.5-3b_ultrafeedback_rloo.yaml", "r2m_qwen2.5-3b_ultrafeedback_grpo.yaml",
                 "r2m_llama3-8b_ultrafeedback_rloo.yaml", "r2m_pythia2.8b_tldr.yaml"):
        cfg = load_config(ROOT / "configs/paper" / name)
        share = cfg.rl.prompts_per_step * cfg.rl.k // 8  # sequences per rank on the 8 GPUs they are sized for
        assert 0 < cfg.rl.rollout_batch_size < share, name
        assert cfg.policy.gradient_checkpointing and cfg.run.mixed_precision == "bf16", name
        assert cfg.rl.rollout_chunks and cfg.rl.rollout_chunks % 8 == 0, name  # N-independent samples on 1-8 GPUs
        assert cfg.rl.generator == "hf" and not cfg.policy.lora.enabled, name  # the papers' full fine-tuning
    for name in ("ser_hh_rlhf.yaml", "ser_ultrafeedback.yaml"):
        cfg = load_config(ROOT / "configs/paper" / name)
        assert cfg.reward.gradient_checkpointing and cfg.policy.gradient_checkpointing, name
        assert cfg.rl.rollout_batch_size > 0 and cfg.run.mixed_precision == "bf16", name


def test_rl_paper_configs_launch_with_fsdp() -> None:
    """DeepSpeed refuses micro-batching (and ZeRO-3, and PPO): the RL paper configs use FSDP."""
    for path in PAPER:
        first = _first_line(path)
        if " r2m rl " in first or " r2m ser " in first and load_config(path).ser.ppo:
            assert "--config_file configs/accelerate/fsdp.yaml" in first, path.name


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
        assert s.lora.enabled and (s.lora.r, s.lora.alpha, s.lora.dropout) == (8, 32, 0.1)
        assert (s.rl.beta, s.rl.kl_adaptive, s.rl.kl_target) == (0.2, True, 0.1)
        assert (cfg.rm.lr, cfg.rm.epochs) == (2e-5, 2)
        # batch size 8 and mini-batch size 1, read per GPU on the paper's 8 GPUs (as rm.batch_size = 4 x 8)
        assert (cfg.rl.lr, cfg.rl.max_new_tokens, cfg.rl.epochs) == (1.4e-5, 256, 4)
        assert (cfg.rl.prompts_per_step, cfg.rl.k, cfg.rl.minibatches) == (8 * 8, 1, 8) and cfg.rm.batch_size == 4 * 8
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
    if path.name == "zero3.yaml":
        # No r2m command runs under ZeRO-3 yet (`r2m rl` refuses it; the SFT/RM loops have no DeepSpeed
        # micro-batch size), and the header says so.
        _check_r2m_argv(_r2m_argv(words))
        _validate_launch(launch)
        assert " r2m rl " not in first and "not run by the project" in path.read_text()
        with pytest.raises(AssertionError, match="cannot run under DeepSpeed"):
            _check_start(first)
    else:
        _check_start(first)
    # Nested keys reach `accelerate launch` as its own arguments (fsdp_config.x -> --fsdp_x): none may be unknown.
    from accelerate.commands.launch import launch_command_parser

    known = vars(launch_command_parser().parse_args(["script.py"]))
    for key in cfg.fsdp_config:
        assert (key if key.startswith("fsdp") else f"fsdp_{key}") in known, f"{path.name}: fsdp_config.{key}"
    for key in cfg.deepspeed_config:
        assert key in known, f"{path.name}: deepspeed_config.{key}"


def _plugin_env(path: Path) -> dict[str, str]:
    """The ACCELERATE_*/FSDP_* environment `accelerate launch --config_file path` gives each process."""
    return _launch_env(_validate_launch(["--config_file", str(path), "-m", "r2m", "config"]))


def test_distributed_setups() -> None:
    """Each launcher setup builds the accelerate plugin it means to (deepspeed itself need not be installed)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.commands.config.config_args import load_config_from_file

    acc = ROOT / "configs" / "accelerate"
    ddp = load_config_from_file(str(acc / "ddp.yaml"))
    assert ddp.distributed_type == DistributedType.MULTI_GPU and ddp.mixed_precision == "bf16"
    cpu = load_config_from_file(str(acc / "ddp_cpu.yaml"))
    assert cpu.use_cpu and cpu.num_processes == 2 and cpu.mixed_precision == "no"
    # torchrun starts the two processes; with run.device=auto and no CUDA r2m makes Accelerator(cpu=True),
    # which joins them over gloo: the command needs no run.device=cpu.
    assert cpu.distributed_type == DistributedType.MULTI_GPU
    args, cfg = _check_r2m_argv(_r2m_argv(_command(_first_line(acc / "ddp_cpu.yaml"))))
    assert cfg.run.device == "auto" and args.config == "configs/world/rloo.yaml"

    for name, stage in (("zero2.yaml", 2), ("zero3.yaml", 3)):
        env = _plugin_env(acc / name)
        assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
        plugin = _deepspeed_plugin(env)
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
    r2m_commands = [c for c in commands if c.startswith(("r2m ", "accelerate launch ", "torchrun "))]
    assert len(r2m_commands) >= 10, commands
    launchers = set()
    for line in r2m_commands:
        _check_start(line)
        words = shlex.split(line)
        if words[0] == "accelerate":
            launch = _launch_args(words)
            launchers.add(launch[launch.index("--config_file") + 1])
    # single GPU (no launcher), the CPU check, DDP, FSDP and the ZeRO-2 alternative are all shown; ZeRO-3 is not
    assert any(c.startswith("r2m rl ") for c in r2m_commands)
    assert any(c.startswith("torchrun ") for c in r2m_commands)
    assert {"configs/accelerate/ddp.yaml", "configs/accelerate/ddp_cpu.yaml", "configs/accelerate/fsdp.yaml",
            "configs/accelerate/zero2.yaml"} <= launchers
    assert "configs/accelerate/zero3.yaml" not in launchers
    # the CPU check: the world cache is built in one process first, with the launch's own config and overrides
    world = next(c for c in r2m_commands if c.startswith("r2m world --models "))
    check = next(c for c in r2m_commands if "configs/accelerate/ddp_cpu.yaml" in c)
    assert world.split("--models ", 1)[1] in check
    for path in re.findall(r"configs/[\w./-]+\.yaml", "\n".join(commands)):
        assert (ROOT / path).is_file(), path


def test_start_checks_refuse_what_r2m_refuses(monkeypatch) -> None:
    """_check_start is as strict as r2m: the combinations r2m refuses at start fail here too."""
    from r2m.errors import ConfigError

    monkeypatch.chdir(ROOT)
    fsdp = "accelerate launch --config_file configs/accelerate/fsdp.yaml"
    zero2 = "accelerate launch --config_file configs/accelerate/zero2.yaml"
    zero3 = "accelerate launch --config_file configs/accelerate/zero3.yaml"
    qwen = "-m r2m rl -c configs/paper/r2m_qwen2.5-3b_ultrafeedback_rloo.yaml"
    refused = {
        f"{zero2} {qwen}": "rl.micro_batch_size: expected 0 \\(or the per-process minibatch",  # the config's micro_batch_size=2
        f"{zero3} {qwen} rl.micro_batch_size=0": "ZeRO-3",
        f"{zero2} -m r2m rl -c configs/paper/ser_hh_rlhf.yaml": "ppo under DeepSpeed",
        f"{fsdp} {qwen} rl.prompts_per_step=60 rl.rollout_chunks=0": "a multiple of the 8 processes",
        f"{fsdp} --num_processes 16 {qwen}": "rl.micro_batch_size|rl.rollout_chunks|rl.minibatches",
        f"{fsdp} -m r2m ser -c configs/paper/ser_hh_rlhf.yaml rl.prompts_per_step=8": "rl.minibatches",
    }
    for line, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            _check_start(line)
    _check_start(f"{zero2} {qwen} rl.micro_batch_size=0")
    _check_start(f"{fsdp} --num_processes 4 {qwen}")


def test_a_typo_in_a_flag_fails(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        _check_r2m_argv(["rl", "--confg", "configs/paper/r2m_pythia2.8b_tldr.yaml"])
    from r2m.errors import ConfigError

    with pytest.raises(ConfigError):
        _check_r2m_argv(["rl", "-c", "configs/paper/r2m_pythia2.8b_tldr.yaml", "rl.prompts_per_stepp=8"])


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_names_every_data_path_its_command_reads(path: Path) -> None:
    """A paper config uses real models, so r2m refuses it if a data path its command reads is left to the
    gold-reward world (the Pythia config once read Table 3's pairs from the world's toy data)."""
    from r2m.recipes.pipeline import check_no_world, rl_needs, ser_needs

    cfg = load_config(path)
    need = ser_needs(cfg) if path.stem.startswith("ser_") else rl_needs(cfg)
    check_no_world(cfg, need)
    assert cfg.reward.max_length >= cfg.data.max_prompt_tokens + cfg.rl.max_new_tokens
