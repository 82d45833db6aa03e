"""The one validation helper of the config dataclasses: a ConfigError naming the field."""

from __future__ import annotations

import enum
from typing import Any

from r2m.errors import ConfigError


def _check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        shown = value.value if isinstance(value, enum.Enum) else value
        raise ConfigError(f"{name}: expected {expected}, got {shown!r}")
