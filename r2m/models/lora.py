"""LoRA adapters (``peft``), gradient checkpointing, and the reference policy as the adapter-free base.

With ``policy.lora.enabled`` RL trains a ``PeftModel``; the frozen reference pi_ref is that same model with
its adapters switched off (:class:`AdapterFreeReference`), as TRL does: one copy of the base weights,
not two. A directory holding ``adapter_config.json`` is loaded as its base model plus the adapter, merged
(:func:`load_merged`), so every loader of r2m accepts an adapter wherever it accepts a model.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from r2m.config.models import PEFT_DEFAULT_TARGETS, LoRAConfig
from r2m.errors import ModelError
from r2m.runtime.safeio import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TASKS = ("causal", "seq_cls")
# Score heads of sequence-classification RMs (r2m.models.reward): trained fully, saved with the adapter.
_HEADS = ("score", "v_head", "classifier")


def peft_config(cfg: LoRAConfig, task: str, model: Optional[nn.Module] = None):
    """The ``peft.LoraConfig`` of ``cfg`` for ``task`` (``causal`` or ``seq_cls``)."""
    from peft import LoraConfig, TaskType  # heavy: lazy

    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    named = tuple(cfg.target_modules)
    # peft-default: None lets peft pick the architecture's own targets (SER's RMs before issue 13).
    targets = {("all-linear",): "all-linear", (PEFT_DEFAULT_TARGETS,): None}.get(named, list(named))
    heads = [h for h in _HEADS if model is not None and isinstance(getattr(model, h, None), nn.Module)]
    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      task_type=TaskType.CAUSAL_LM if task == "causal" else TaskType.SEQ_CLS,
                      modules_to_save=(heads or None) if task == "seq_cls" else None)


def apply_lora(model: nn.Module, cfg: LoRAConfig, task: str, base_path: Optional[str] = None):
    """Wrap ``model`` in a ``peft`` LoRA model (in place): only the adapters train, and for ``seq_cls`` the score head.

    ``base_path`` is recorded in the adapter's config (absolute when it is a local directory), so that a
    saved adapter can be loaded on its own (:func:`load_merged`). The adapters' init draws from torch's RNG.
    """
    from peft import get_peft_model  # heavy: lazy

    peft_model = get_peft_model(model, peft_config(cfg, task, model))
    if base_path is not None:
        peft_model.peft_config["default"].base_model_name_or_path = _absolute(base_path)
    return peft_model


def is_peft(model: nn.Module) -> bool:
    from peft import PeftModel  # heavy: lazy

    return isinstance(model, PeftModel)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing on a Hugging Face model (or a ``peft`` model's base).

    It only acts in train mode, so generation and the no-grad log-prob passes are unaffected. With the
    non-reentrant variant a frozen base needs no ``enable_input_require_grads``; transformers adds that hook
    itself where it wants it.
    """
    hf = model.get_base_model() if is_peft(model) else model
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise ModelError(f"{type(hf).__name__}: does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(hf, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def merged_copy(peft_model: nn.Module) -> nn.Module:
    """A plain Hugging Face model with the adapters merged in; ``peft_model`` itself is left as it is."""
    return copy.deepcopy(peft_model).merge_and_unload()


# ---------------------------------------------------------------------------------------------
# The reference: the policy's base with the adapters off
# ---------------------------------------------------------------------------------------------


class AdapterFreeReference(nn.Module):
    """pi_ref as the LoRA policy's base model: ``peft_model`` run with its adapters disabled, in eval mode,
    without gradients. It has the call and ``generate`` interface of a causal LM.

    The ``peft`` model is held as a plain attribute, not a submodule: ``.to``, ``.eval``, ``.parameters()``
    and ``.requires_grad_`` on the reference never reach the policy. Each call switches the shared model to
    eval mode and back, so the policy's train/eval state is what it was before.
    """

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)

    @contextlib.contextmanager
    def _base(self) -> Iterator[nn.Module]:
        m = self.peft_model
        was_training = m.training
        m.eval()
        try:
            with m.disable_adapter(), torch.no_grad():
                yield m
        finally:
            m.train(was_training)

    def forward(self, *args, **kwargs):
        with self._base() as m:
            return m(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self._base() as m:
            return m.generate(*args, **kwargs)

    @property
    def config(self):
        return self.peft_model.config

    @property
    def device(self) -> torch.device:
        return next(self.peft_model.parameters()).device


# ---------------------------------------------------------------------------------------------
# Saved adapters
# ---------------------------------------------------------------------------------------------


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` is a local directory written by ``PeftModel.save_pretrained``."""
    return Path(path, ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on (a relative path is tried against the adapter's dir)."""
    meta = read_json(Path(path, ADAPTER_CONFIG))  # undecodable bytes: named
    base = meta.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"adapter at {path}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    if not Path(base).is_absolute() and not Path(base).exists() and (Path(path) / base).exists():
        return str(Path(path) / base)
    return base


def load_adapter(base_model: nn.Module, path: str | Path, trainable: bool = False,
                 allow_unsafe_weights: bool = False):
    """``base_model`` with the adapter of ``path`` attached (trainable or not), as a ``PeftModel``."""
    from peft import PeftModel  # heavy: lazy

    _check_weights(path, allow_unsafe_weights)
    return PeftModel.from_pretrained(base_model, str(path), is_trainable=trainable)


def load_merged(path: str | Path, load_base: Callable[[str], nn.Module], allow_unsafe_weights: bool = False):
    """The plain model of an adapter directory: ``load_base(its base path)`` with the adapter merged in."""
    _check_weights(path, allow_unsafe_weights)
    base = load_base(adapter_base(path))
    return load_adapter(base, path, allow_unsafe_weights=allow_unsafe_weights).merge_and_unload()


def _check_weights(path: str | Path, allow_unsafe_weights: bool) -> None:
    if not allow_unsafe_weights and not Path(path, ADAPTER_WEIGHTS).is_file():
        raise ModelError(f"adapter at {path}: no {ADAPTER_WEIGHTS} (pickle weights need run.allow_unsafe_weights=true)")


def _absolute(path: str) -> str:
    p = Path(path)
    return str(p.resolve()) if p.exists() else path
