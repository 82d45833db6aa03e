"""Per-path sections of ``data``: a format and a split for each data path (prompts from one dataset, pairs from
another). Kept apart from r2m/config.py, which is long enough."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Optional

from r2m.errors import ConfigError


def format_names() -> list[str]:
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


class DatasetFormat(str, Enum):
    """The schema of a source dataset."""

    PLAIN = "plain"
    """r2m's own JSONL schemas (:mod:`r2m.data.jsonl`)."""
    ULTRAFEEDBACK = "ultrafeedback"
    """``HuggingFaceH4/ultrafeedback_binarized``: chosen/rejected as chat message lists."""
    HH_RLHF = "hh_rlhf"
    """``Anthropic/hh-rlhf``: chosen/rejected as full Human/Assistant transcripts."""
    TLDR = "tldr"
    """``trl-lib/tldr``: prompt/completion (SFT demonstrations, no pairs)."""
    TLDR_PREFERENCE = "tldr_preference"
    """``trl-lib/tldr-preference`` (prompt/chosen/rejected) or the OpenAI comparisons (info/summaries/choice)."""
    STACK_EXCHANGE = "stack_exchange"
    """``lvwerra/stack-exchange-paired``: question, response_j (preferred), response_k."""
    TRL = "trl"
    """TRL's standard and conversational formats (prompt-only, prompt-completion, preference with an explicit
    or implicit prompt), detected per row by its columns (:mod:`r2m.data.trl_formats`)."""
