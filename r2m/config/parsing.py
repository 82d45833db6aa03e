"""Building configs from dicts, YAML and ``a.b=c`` overrides; saving them; cache-key fingerprints."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import yaml

from r2m.errors import ConfigError
from r2m.fileio import atomic_write_text, decode_lines
from r2m.config.checks import _check
from r2m.config.commands import with_user_model_defaults
from r2m.config.root import Config


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, or raise a ConfigError naming ``name``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, name)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        _check(isinstance(value, dict), name, "a mapping", value)
        return _build(tp, value, name)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value.value if isinstance(value, enum.Enum) else value)
        except ValueError:
            raise ConfigError(f"{name}: expected one of {', '.join(m.value for m in tp)}, got {value!r}") from None
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        _check(isinstance(value, (list, tuple)), name, "a list", value)
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        _check(isinstance(value, bool), name, "true or false", value)
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
        return float(value)
    if tp is str:
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), name, "a string", value)
        return str(value)
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in data:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key; valid keys here are {sorted(known)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            where = f"{prefix}.{f.name}" if prefix else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        # Nested validators name their own section ("arch.hidden_size"); prefix the full path.
        if prefix and not msg.startswith(prefix + "."):
            head = prefix.rsplit(".", 1)[-1]
            msg = f"{prefix}.{msg[len(head) + 1:]}" if msg.startswith(head + ".") else f"{prefix}: {msg}"
        raise ConfigError(msg) from None


def to_dict(cfg: Any) -> Any:
    """Plain-python (YAML-safe) view of a config."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, enum.Enum):
        return cfg.value
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=c`` -> ("a.b", yaml-parsed c)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    return key, (yaml.safe_load(raw) if raw.strip() else "")


def _set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
        node = child
    node[parts[-1]] = value


def read_config_file(path: str | Path) -> dict:
    """The mapping of a YAML config file (errors name the file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    text = "\n".join(decode_lines(p, p.read_bytes()))
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: invalid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded or {}


def load_config(path: Optional[str | Path] = None, overrides: typing.Sequence[str] = (),
                layers: typing.Sequence[typing.Mapping[str, Any]] = (), data: Optional[dict] = None) -> Config:
    """The config of the YAML file ``path`` (or ``data``, its already-read mapping; neither: the world's defaults),
    then each of ``layers`` (``{dotted: value}``, e.g. what TRL's names became), then the ``a.b=c`` overrides.

    A field left unset by all of them takes its default, except where the policy is a user's model: then
    :data:`r2m.config.commands.USER_MODEL_DEFAULTS` replace the world's toy lengths."""
    data = dict(data) if data is not None else (read_config_file(path) if path is not None else {})
    for layer in layers:
        for dotted, value in layer.items():
            _set_path(data, dotted, to_dict(value))
    for ov in overrides:
        key, value = parse_override(ov)
        _set_path(data, key, value)
    try:
        return _build(Config, with_user_model_defaults(data))
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def replace_path(cfg: Config, **dotted: Any) -> Config:
    """A new config with ``section__key=value`` replaced (``run__name="x"``). The original is untouched."""
    data = to_dict(cfg)
    for k, v in dotted.items():
        _set_path(data, k.replace("__", "."), to_dict(v))
    return _build(Config, data)


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


# Fields that change how a training is logged or checkpointed, never what it produces: they do not
# enter the cache keys of artifacts, so adding or changing one never rebuilds the world's models.
# gradient_checkpointing recomputes the same activations: it changes memory and time, not the result.
NON_SEMANTIC = frozenset({"save_every", "log_every", "eval_every", "progress", "log_with", "keep_checkpoints",
                          "resume", "threads", "gradient_checkpointing", "push_to_hub", "hub_model_id",
                          "hub_private_repo"})


def _semantic(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _semantic(v) for k, v in d.items() if k not in NON_SEMANTIC}
    return d


def config_hash(*parts: Any) -> str:
    """Stable short hash of config parts (for caching world artifacts): every field, whatever its value, except the
    logging/checkpoint ones (:data:`NON_SEMANTIC`)."""
    blob = json.dumps([_semantic(to_dict(p)) for p in parts], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def field_docs(cls: type) -> dict[str, str]:
    """Field docstrings of a config dataclass (the string literal under each field), its bases' included (a field a
    subclass declares again has the subclass's docstring)."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for prev, node in zip(body, body[1:]):
            if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(node, ast.Expr)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                docs[prev.target.id] = node.value.value.strip()
    return docs
