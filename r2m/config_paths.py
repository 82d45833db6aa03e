"""Per-path sections of ``data``: a format and a split for each data path (prompts from one dataset, pairs from
another). Kept apart from r2m/config.py, which is long enough."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from r2m.errors import ConfigError


def format_names() -> list[str]:
    from r2m.datasets import DatasetFormat

    return [f.value for f in DatasetFormat]


@dataclass(frozen=True)
class PathFormats:
    """A format per data path, where one dataset gives the prompts and another the pairs; None: data.format."""

    prompts: Optional[str] = None
    """Format of data.prompts."""
    eval_prompts: Optional[str] = None
    """Format of data.eval_prompts."""
    sft: Optional[str] = None
    """Format of data.sft."""
    pref_train: Optional[str] = None
    """Format of data.pref_train."""
    pref_eval: Optional[str] = None
    """Format of data.pref_eval."""
    pref_policy: Optional[str] = None
    """Format of data.pref_policy."""

    def __post_init__(self) -> None:
        formats = format_names()
        for f in fields(self):
            value = getattr(self, f.name)
            if not (value is None or value in formats):
                raise ConfigError(f"formats.{f.name}: expected null or one of {formats}, got {value!r}")


@dataclass(frozen=True)
class PathSplits:
    """A split per data path (e.g. held-out pairs from another dataset's 'validation'); None: data.train_split
    or data.eval_split."""

    prompts: Optional[str] = None
    """Split of data.prompts."""
    eval_prompts: Optional[str] = None
    """Split of data.eval_prompts."""
    sft: Optional[str] = None
    """Split of data.sft."""
    pref_train: Optional[str] = None
    """Split of data.pref_train."""
    pref_eval: Optional[str] = None
    """Split of data.pref_eval."""
    pref_policy: Optional[str] = None
    """Split of data.pref_policy."""
