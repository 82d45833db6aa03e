"""TRL's argument names (``GRPOConfig`` / ``RLOOConfig`` / ``TrainingArguments``) mapped onto r2m's fields.

Used by the CLI (``r2m rl --num_generations 4``) and by the object API's argument classes (``r2m.RLConfig``).
Each entry turns one TRL value into the dotted r2m overrides it means; docs/TRL.md lists where the meanings differ.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any, Callable

from r2m.errors import ConfigError


def _output_dir(value: Any) -> dict[str, Any]:
    path = PurePath(str(value))
    if not path.name:
        raise ConfigError(f"output_dir: {value!r} has no last component to name the run (run.root/run.name)")
    return {"run.root": str(path.parent), "run.name": path.name}


def _report_to(value: Any) -> dict[str, Any]:
    names = [value] if isinstance(value, str) else list(value or [])
    return {"run.log_with": [n for n in names if n not in ("none", "")]}  # TRL's "none": no tracker


def _bf16(value: Any) -> dict[str, Any]:
    if not isinstance(value, bool):
        raise ConfigError(f"bf16: expected true or false, got {value!r}")
    return {"run.mixed_precision": "bf16" if value else "no"}


def _field(dotted: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {dotted: value}


def _section_field(key: str) -> Callable[[Any, str], dict[str, Any]]:
    """A field of the trained section: ``learning_rate`` is rl.lr for RL, rm.lr for RM training."""
    return lambda value, section: {f"{section}.{key}": value}


TRL_NAMES: dict[str, Callable[..., dict[str, Any]]] = {
    "num_generations": _field("rl.k"),
    "max_completion_length": _field("rl.max_new_tokens"),
    "epsilon": _field("rl.clip_eps"),
    "learning_rate": _section_field("lr"),
    "output_dir": _output_dir,
    "report_to": _report_to,
    "save_steps": _section_field("save_every"),
    "seed": _field("run.seed"),
    "bf16": _bf16,
    "model_name_or_path": _field("policy.path"),
    "dataset_name": _field("data.prompts"),
    "max_steps": _field("rl.steps"),
    "beta": _field("rl.beta"),
    "num_iterations": _field("rl.epochs"),
}
"""TRL name -> the r2m overrides it stands for (entries built by ``_section_field`` also take the section)."""
SECTIONED = frozenset({"learning_rate", "save_steps"})


def trl_overrides(values: dict[str, Any], section: str = "rl") -> dict[str, Any]:
    """``{"num_generations": 4, "output_dir": "runs/x"}`` -> ``{"rl.k": 4, "run.root": "runs", "run.name": "x"}``."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in TRL_NAMES:
            raise ConfigError(f"{name}: not a TRL name r2m maps (known: {', '.join(sorted(TRL_NAMES))}); "
                              "give r2m's own field as section.key")
        out.update(TRL_NAMES[name](value, section) if name in SECTIONED else TRL_NAMES[name](value))
    return out
