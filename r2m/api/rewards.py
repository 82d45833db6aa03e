"""``reward_funcs`` as TRL takes them: reward models (a path or a transformers model) and Python callables called
by keyword, ``f(prompts=, completions=, completion_ids=, **kwargs)``, summed with ``reward_weights``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from r2m.errors import ConfigError, DataError
from r2m.experience.rewards import RewardOutput, RewardQuery


class CallableReward:
    """A Python reward function as an RL reward function (no RM, so no R2M of its own).

    Called as TRL calls it: by keyword, with ``prompts`` (the prompt texts), ``completions`` (the sampled tokens
    decoded without special tokens) and ``completion_ids`` (those tokens); a function without ``**kwargs`` gets the
    ones it names. A ``None`` score (TRL: "not applicable") is NaN; the weighted sum skips it (TRL's nansum).
    """

    needs_policy_hidden = False
    reward_model = None

    def __init__(self, fn: Callable[..., Sequence[Optional[float]]], tokenizer: Any = None):
        self.fn, self.tokenizer = fn, tokenizer  # the policy's tokenizer (set before the first call)
        self.name = getattr(fn, "__name__", type(fn).__name__)
        params = inspect.signature(fn).parameters.values()
        self.takes_all = any(p.kind == p.VAR_KEYWORD for p in params)
        self.names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not self.takes_all and "completions" not in self.names and "completion_ids" not in self.names:
            raise ConfigError(f"reward function {self.name!r}: reward functions are called by keyword, as TRL calls "
                              "them: f(prompts=..., completions=..., completion_ids=..., **kwargs)")

    def __call__(self, query: RewardQuery) -> RewardOutput:
        ids = query.response_ids
        if ids is None:  # a caller without the sampled tokens: the policy's tokens of the text
            ids = [self.tokenizer(r, add_special_tokens=False)["input_ids"] for r in query.responses]
        kwargs = {"prompts": list(query.prompts), "completion_ids": [list(i) for i in ids],
                  "completions": [self.tokenizer.decode(i, skip_special_tokens=True) for i in ids]}
        if not self.takes_all:
            kwargs = {k: v for k, v in kwargs.items() if k in self.names}
        raw = list(self.fn(**kwargs))
        if len(raw) != len(query.prompts):
            raise DataError(f"reward function {self.name!r}: returned {len(raw)} scores, expected one per completion "
                            f"({len(query.prompts)})")
        scores = torch.tensor([float("nan") if s is None else float(s) for s in raw], dtype=torch.float32)
        return RewardOutput(scores, None)


@dataclass
class RewardFuncs:
    """``reward_funcs`` sorted out: at most one reward model (r2m's reward.path, which R2M wraps) and callables."""

    model: Any = None
    """The reward model: a path, or a transformers sequence classifier (None: callables only)."""
    tokenizer: Any = None
    """The reward model's tokenizer (reward_processing_classes), for a model object."""
    model_weight: float = 1.0
    callables: list[tuple[float, CallableReward]] = field(default_factory=list)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def sort_reward_funcs(reward_funcs: Any, processing_classes: Any = None,
                      weights: Optional[Sequence[float]] = None) -> RewardFuncs:
    """TRL's ``reward_funcs`` (one or a list), ``reward_processing_classes`` and ``reward_weights``."""
    funcs = [] if reward_funcs is None else _as_list(reward_funcs)
    if weights is not None and len(weights) != len(funcs):
        raise ConfigError(f"reward_weights: {len(weights)} weights for {len(funcs)} reward functions")
    weights = [1.0] * len(funcs) if weights is None else [float(w) for w in weights]
    tokenizers = _as_list(processing_classes) if processing_classes is not None else [None] * len(funcs)
    if len(tokenizers) != len(funcs):
        raise ConfigError(f"reward_processing_classes: {len(tokenizers)} for {len(funcs)} reward functions")
    out = RewardFuncs()
    for i, (fn, w, tok) in enumerate(zip(funcs, weights, tokenizers)):
        is_model = isinstance(fn, (str, Path)) or isinstance(fn, torch.nn.Module)
        if not is_model and not callable(fn):
            raise ConfigError(f"reward_funcs[{i}]: expected a reward model (path or transformers model) or a "
                              f"callable, got {type(fn).__name__}")
        if not is_model:
            out.callables.append((w, CallableReward(fn)))
            continue
        if out.model is not None:
            raise ConfigError(f"reward_funcs[{i}]: a second reward model; r2m scores with one (reward.path, the one "
                              "R2M wraps): pass the others' scores as callables")
        out.model, out.tokenizer, out.model_weight = fn, tok, w
    return out


def import_reward(name: str) -> Callable:
    """GRPO's script argument ``reward_funcs``: a dotted import path, or TRL's registry name that reads only the
    completions' tokens (get_soft_overlong_punishment, as TRL's script builds it)."""
    import importlib
    import os
    import sys

    if name in ("accuracy_reward", "reasoning_accuracy_reward"):
        raise ConfigError(f"reward_funcs: {name} reads the dataset's solution column, which r2m does not pass to "
                          "reward functions")
    if name == "think_format_reward":
        raise ConfigError("reward_funcs: think_format_reward reads conversational completions ([{'content': ...}]); "
                          "r2m passes completions as strings")
    if name == "get_soft_overlong_punishment":
        from trl.rewards import get_soft_overlong_punishment  # heavy: lazy

        return get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256)
    if "." not in name:
        raise ConfigError(f"reward_funcs: {name!r} is neither a dotted import path nor one of TRL's reward names")
    module, attr = name.rsplit(".", 1)
    sys.path.insert(0, os.getcwd())  # as TRL's script: modules beside the recipe
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward_funcs: cannot import {name!r}: {e}") from None
