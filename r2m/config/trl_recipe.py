"""Flat TRL recipe YAMLs (the ``--config`` files of TRL's ``trl grpo`` / ``trl reward`` scripts) for ``r2m rl`` and
``r2m rm``, parsed by TRL's own ``TrlParser`` over the same dataclasses TRL's scripts use.

A recipe's top-level keys are TRL's names; keys that are r2m's config sections (``reward:``, ``rl:``, ...) are
r2m's own settings beside them (R2M itself: ``reward: {r2m: {enabled: true}}``). TRL is imported only here, when a
recipe is read.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

from r2m.config.root import Config
from r2m.config.trl_names import RULES
from r2m.errors import ConfigError

R2M_SECTIONS = frozenset(f.name for f in dataclasses.fields(Config))


def split_recipe(data: dict) -> Optional[tuple[dict, dict]]:
    """(r2m's sections, TRL's names) of a config file's mapping; None when it holds r2m's sections only."""
    trl = {k: v for k, v in data.items() if k not in R2M_SECTIONS}
    if not trl:
        return None
    return {k: v for k, v in data.items() if k in R2M_SECTIONS}, trl


def recipe_types(command: str, algorithm: Optional[str]) -> tuple[tuple[type, ...], str]:
    """The dataclasses TRL's script for ``command`` parses (GRPO's, or RLOO's with rl.algorithm=rloo), and the
    trainer they configure."""
    from trl import GRPOConfig, ModelConfig, RewardConfig, RLOOConfig, ScriptArguments  # heavy: lazy
    from trl.scripts.grpo import GRPOScriptArguments  # heavy: lazy

    if command == "rl":
        rloo = algorithm == "rloo"
        return (GRPOScriptArguments, RLOOConfig if rloo else GRPOConfig, ModelConfig), "rloo" if rloo else "grpo"
    if command == "rm":
        return (ScriptArguments, RewardConfig, ModelConfig), "reward"
    raise ConfigError(f"a flat TRL recipe configures a trainer: r2m rl (GRPO, RLOO) or r2m rm (RewardTrainer), "
                      f"not r2m {command}")


def parse_recipe(trl_part: dict, cli: Sequence[str], command: str, algorithm: Optional[str],
                 where: str) -> tuple[dict[str, Any], str]:
    """Every value of the recipe's dataclasses (TRL's defaults included), after ``cli`` (``--name value`` tokens,
    which win over the file, as in TRL); names r2m maps that the installed TRL has not (max_prompt_length) are taken
    as they are. Returns (values, trainer)."""
    types, trainer = recipe_types(command, algorithm)
    known = {f.name for t in types for f in dataclasses.fields(t)}
    trl_part = dict(trl_part)
    for key, value in (trl_part.pop("env", None) or {}).items():  # TRL's recipes may set environment variables
        os.environ[str(key)] = str(value)
    extra = {k: trl_part.pop(k) for k in list(trl_part) if k not in known and k in RULES}
    cli, extra_cli = _own_names(list(cli), known)
    extra.update(extra_cli)
    unknown = sorted(k for k in trl_part if k not in known)
    if unknown:
        raise ConfigError(f"{where}: {', '.join(unknown)}: not TRL's names for r2m {command} (nor r2m config "
                          f"sections: {', '.join(sorted(R2M_SECTIONS))})")
    from trl import TrlParser  # heavy: lazy

    parser = TrlParser(types)
    parser.set_defaults_with_config(**trl_part)
    try:
        *objects, rest = parser.parse_args_into_dataclasses(args=list(cli), return_remaining_strings=True)
    except (ValueError, TypeError) as e:  # TrainingArguments' own validation
        raise ConfigError(f"{where}: {e}") from None
    if rest:
        raise ConfigError(f"{where}: arguments TRL's parser did not take: {' '.join(rest)}")
    values: dict[str, Any] = {}
    for obj in objects:
        values.update({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    return {**values, **extra}, trainer


def _own_names(cli: list[str], known: set) -> tuple[list[str], dict[str, Any]]:
    """``--name value`` tokens of names r2m maps that TRL's dataclasses lack, taken out of ``cli``."""
    import yaml

    rest, out, i = [], {}, 0
    while i < len(cli):
        name = cli[i][2:].split("=", 1)[0] if cli[i].startswith("--") else ""
        if name in RULES and name not in known:
            raw, i = (cli[i].split("=", 1)[1], i + 1) if "=" in cli[i] else (cli[i + 1], i + 2)
            out[name] = yaml.safe_load(raw)
            continue
        rest.append(cli[i])
        i += 1
    return rest, out
