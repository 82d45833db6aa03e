"""The one validation helper of the config dataclasses: a ConfigError naming the field."""

from __future__ import annotations

from typing import Any

from r2m.errors import ConfigError


def _check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")
