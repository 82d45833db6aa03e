"""What each subcommand reads: its model paths (a path it would ignore is refused), its config fields
(``--help-config``), and the defaults a user's model gets instead of the gold-reward world's."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Collection, Optional

from r2m.errors import ConfigError

log = logging.getLogger("r2m")

MODEL_FIELDS = ("policy.path", "reward.path", "rm.init_from")
"""The config fields that name a model."""

TRAINS = {"sft": "policy.path", "rm": "rm.init_from", "rl": "policy.path", "ser": "rm.init_from"}
"""Command -> the model it trains (left unset: the gold-reward world's)."""


def is_world_artifact(path: str, run_root: str) -> bool:
    """True for a path inside r2m's own world cache (``<run.root>/world``): the world's models, not a user's."""
    root = (Path(run_root) / "world").resolve()
    p = Path(path).resolve()
    return p == root or root in p.parents


def models_read(command: str, what: Optional[str], cfg: Any) -> tuple[str, ...]:
    """The model fields ``r2m <command> [what]`` reads with ``cfg``."""
    rm = ("reward.path",) if getattr(cfg.reward.source, "value", cfg.reward.source) == "model" else ()
    if command == "eval":
        return {"policy": ("policy.path", *rm), "rm": ("reward.path",), "winrate": ("reward.path",)}.get(what or "", ())
    return {"sft": ("policy.path",), "rm": ("rm.init_from",), "rl": ("policy.path", *rm),
            "ser": ("rm.init_from", "policy.path")}.get(command, MODEL_FIELDS)


def _get(cfg: Any, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def check_models(cfg: Any, command: str, what: Optional[str] = None, given: Collection[str] = ()) -> None:
    """Refuse a user's model path ``r2m <command>`` would not read: when it was given explicitly (``given``: the
    dotted fields set on the command line or by an API argument), or when the command's own model is left to the
    gold-reward world (it would train the world's toy model while the user's sits unread). One only set by a
    config file shared between commands is logged."""
    reads = models_read(command, what, cfg)
    own = TRAINS.get(command)
    for name in MODEL_FIELDS:
        value = _get(cfg, name)
        if name in reads or value is None or is_world_artifact(value, cfg.run.root):
            continue
        where = f"r2m {command}{' ' + what if what else ''}"
        if name in given:
            raise ConfigError(f"{name}={value}: {where} does not read it (it reads {', '.join(reads) or 'no model'}"
                              f"{'; TRL: model_name_or_path is ' + own if own else ''})")
        if own is not None and _get(cfg, own) is None:
            raise ConfigError(f"{name}={value} is set, but {where} trains {own}, which is unset: it would train the "
                              f"gold-reward world's toy model and leave {value} unread; set {own}")
        log.warning("%s=%s (from the config file) is not read by %s", name, value, where)


USER_MODEL_DEFAULTS = {("data", "max_prompt_tokens"): 1024, ("data", "overlong"): "skip",
                       ("rl", "max_new_tokens"): 512}
"""Defaults with a user's policy instead of the world's (64 prompt tokens, cut from the left; 10 new tokens):
TRL 1.16's max_completion_length, and a prompt budget that skips (and counts) a longer prompt rather than cut it."""


def with_user_model_defaults(data: dict) -> dict:
    """``data`` (a raw config mapping) with :data:`USER_MODEL_DEFAULTS` for every such field it leaves unset, when its
    policy.path is a user's model (outside the world cache); unchanged otherwise."""
    policy = (data.get("policy") or {}).get("path") if isinstance(data.get("policy"), dict) else None
    root = (data.get("run") or {}).get("root", "runs") if isinstance(data.get("run"), dict) else "runs"
    if policy is None or is_world_artifact(str(policy), str(root)):
        return data
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for (section, key), value in USER_MODEL_DEFAULTS.items():
        part = out.setdefault(section, {})
        if isinstance(part, dict):
            part.setdefault(key, value)
    return out


# ------------------------------------------------------------------ --help-config
_DATA_OF = {"sft": ("sft",), "rm": ("pref_train", "pref_eval"), "rl": ("prompts", "eval_prompts", "pref_eval",
                                                                        "pref_policy")}
_DATA_PATHS = ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval", "pref_policy")
_SECTIONS = {
    "world": ("run.", "world."),
    "sft": ("run.", "world.", "data.", "policy.", "sft."),
    "rm": ("run.", "world.", "data.", "reward.arch.", "reward.dtype", "reward.trust_remote_code", "reward.lora.",
           "reward.gradient_checkpointing", "reward.max_length", "rm.", "sft."),
    "rl": ("run.", "world.", "data.", "policy.", "reward.", "sft.", "rm.", "rl.", "eval."),
}
"""Command -> the field prefixes it reads (the world's sections build its models when a path is unset)."""


def reads_field(command: str, dotted: str) -> bool:
    """Whether ``r2m <command>`` reads the config field ``dotted`` (every field for the other commands)."""
    prefixes = _SECTIONS.get(command)
    if prefixes is None:
        return True
    if not dotted.startswith(prefixes) or dotted.startswith("eval.judge."):
        return False
    parts = dotted.split(".")
    if parts[0] == "data" and (parts[-1] in _DATA_PATHS):
        return parts[-1] in _DATA_OF[command]  # data.<path>, data.formats.<path>, data.splits.<path>
    if command == "rm" and parts[0] == "data" and parts[1] == "max_prompt_tokens":
        return False
    return True
