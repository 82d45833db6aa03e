"""The trainers' ``args``, whatever a TRL user brings: TRL's ``GRPOConfig`` / ``RLOOConfig`` / ``RewardConfig`` (or a
bare ``transformers.TrainingArguments``), or r2m's own ``RLArguments`` / ``RMArguments``; and ``peft_config``."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from r2m.api.args import RLArguments, TrainerArguments
from r2m.config.parsing import replace_path
from r2m.config.trl_map import TrlMapping, map_trl
from r2m.config.trl_names import RULES
from r2m.errors import ConfigError

log = logging.getLogger("r2m")

_TRAINERS = {"GRPOConfig": "grpo", "RLOOConfig": "rloo", "RewardConfig": "reward", "TrainingArguments": None}


def trl_kind(args: Any) -> Optional[str]:
    """grpo, rloo, reward (or "" for a bare TrainingArguments) for TRL's / transformers' argument objects, else None."""
    for cls in type(args).__mro__:
        if cls.__name__ in _TRAINERS and cls.__module__.startswith(("trl.", "transformers.")):
            return _TRAINERS[cls.__name__] or ""
    return None


def world_size() -> int:
    """Processes of the launch (accelerate / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@dataclass
class Resolved:
    """``args`` as config layers: the file to start from, what TRL's names became, r2m's own fields."""

    config_file: Optional[str]
    trl: TrlMapping
    r2m: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    trl_args: Any = None
    """The TRL / transformers object itself (the callbacks' ``args``), when one was given."""


def resolve_args(args: Any, command: str, default: type) -> Resolved:
    """``args`` for ``r2m.<command>`` trainer (rl or rm): r2m's ``default`` class when None."""
    args = default() if args is None else args
    kind = trl_kind(args)
    if kind is not None:
        wanted = {"rl": ("grpo", "rloo", ""), "rm": ("reward", "")}[command]
        if kind not in wanted:
            raise ConfigError(f"args: a {type(args).__name__} configures another trainer; r2m's {command} trainer "
                              f"takes {' or '.join(k.upper() + 'Config' for k in wanted if k) or 'RewardConfig'}")
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args)}
        mapping = map_trl(values, command, complete=True, trainer=kind or None, world=world_size())
        return Resolved(None, mapping, trl_args=args)
    if not isinstance(args, TrainerArguments) or (command == "rl") != isinstance(args, RLArguments):
        want = "r2m.RLArguments, trl.GRPOConfig or trl.RLOOConfig" if command == "rl" else \
            "r2m.RMArguments or trl.RewardConfig"
        raise ConfigError(f"args: expected {want}, got {type(args).__name__}")
    mapping = map_trl(args.trl_values(), command, world=world_size())
    return Resolved(args.config_file, mapping, args.r2m_fields(), dict(args.overrides))


_LORA_KEPT = {"r", "lora_alpha", "lora_dropout", "target_modules", "task_type", "base_model_name_or_path",
              "revision", "inference_mode", "peft_type", "modules_to_save"}


def peft_overrides(peft_config: Any, model: str) -> dict[str, Any]:
    """A peft ``LoraConfig`` as ``<model>.lora.*`` (model: policy or reward); any other field set is refused."""
    if peft_config is None:
        return {}
    if type(peft_config).__name__ != "LoraConfig":
        raise ConfigError(f"peft_config: r2m trains LoRA adapters (peft.LoraConfig), got {type(peft_config).__name__}")
    defaults = type(peft_config)()
    changed = [f.name for f in dataclasses.fields(peft_config) if f.name not in _LORA_KEPT
               and getattr(peft_config, f.name) != getattr(defaults, f.name)]
    saved = peft_config.modules_to_save
    if saved and not (model == "reward" and set(saved) <= {"score", "classifier"}):
        changed.append("modules_to_save")
    if changed:
        raise ConfigError(f"peft_config: r2m's LoRA takes r, lora_alpha, lora_dropout and target_modules; these are "
                          f"set to other than peft's defaults: {', '.join(sorted(changed))}")
    targets = peft_config.target_modules
    targets = ["peft-default"] if not targets else [targets] if isinstance(targets, str) else sorted(targets)
    return {f"{model}.lora.enabled": True, f"{model}.lora.r": peft_config.r, f"{model}.lora.alpha":
            peft_config.lora_alpha, f"{model}.lora.dropout": peft_config.lora_dropout,
            f"{model}.lora.target_modules": targets}


def refuse_unsupported(**given: Any) -> None:
    """TRL trainer arguments r2m has no use for (optimizers, quantization_config, tools, ...): TRL's default only."""
    verdicts = [RULES[name].check(name, value) for name, value in given.items()]
    errors = [v.text for v in verdicts if v is not None and v.refused]
    if errors:
        raise ConfigError("TRL arguments r2m cannot honour (docs/TRL.md):\n  " + "\n  ".join(errors))


def resume_config(cfg: Any, resume: Any) -> Any:
    """``resume_from_checkpoint``: True, or the run's latest checkpoint: ``cfg`` with run.resume=auto. As in TRL, a
    resume without a checkpoint is an error; r2m resumes from the run's latest checkpoint only."""
    from pathlib import Path

    from r2m.runtime.checkpoint import latest_checkpoint  # heavy: lazy

    if isinstance(resume, str) and resume.lower() in ("true", "false"):
        resume = resume.lower() == "true"
    if resume in (None, False, ""):
        return cfg
    checkpoints = Path(cfg.run.root) / cfg.run.name / "checkpoints"
    latest = latest_checkpoint(checkpoints)
    if latest is None:
        raise ConfigError(f"resume_from_checkpoint: no checkpoint in {checkpoints}")
    if resume is not True and Path(str(resume)).resolve() != latest.resolve():
        raise ConfigError(f"resume_from_checkpoint={resume}: r2m resumes from the run's latest checkpoint, {latest}")
    return replace_path(cfg, run__resume="auto")


def log_warnings(mapping: TrlMapping) -> None:
    for text in mapping.warnings:
        log.warning("%s", text)


def dotted(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{dotted: value}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.update(dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


__all__ = ["Resolved", "resolve_args", "peft_overrides", "trl_kind"]
