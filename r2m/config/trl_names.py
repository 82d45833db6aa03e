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


FLAGS = frozenset({"bf16"})
"""TRL names that may stand alone as flags (``--bf16`` means ``--bf16 true``)."""


def _as_override(dotted: str, value: Any) -> str:
    import json

    return f"{dotted}={value if isinstance(value, str) else json.dumps(value)}"


def cli_overrides(argv: list[str], section: str = "rl") -> list[str]:
    """``--section.key value``, ``--section.key=value`` and ``--<TRL name> value`` -> ``a.b=c`` tokens.

    Anything else (``-c``, ``--config FILE``, ``--out``, ``a.b=c``) is passed through untouched.
    """
    import yaml

    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        key = token[2:].split("=", 1)[0] if token.startswith("--") else ""
        if not key or not ("." in key or key in TRL_NAMES):
            out.append(token)
            i += 1
            continue
        if "=" in token:
            raw, i = token.split("=", 1)[1], i + 1
        elif key in FLAGS and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            raw, i = "true", i + 1
        elif i + 1 < len(argv):
            raw, i = argv[i + 1], i + 2
        else:
            raise ConfigError(f"{token}: expected a value after it")
        if "." in key:
            out.append(f"{key}={raw}")
            continue
        value = yaml.safe_load(raw) if raw.strip() else ""
        out.extend(_as_override(k, v) for k, v in trl_overrides({key: value}, section).items())
    return out
