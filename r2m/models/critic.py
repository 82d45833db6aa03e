"""The PPO critic: a scalar value head on a transformer backbone.

The backbone is the base model of any Hugging Face decoder (``model.model`` for Llama, in general
``getattr(m, m.base_model_prefix)``); the head maps each position's last-layer hidden state to a
value. It starts either from a reward model (backbone and ``score`` head, so the first values are
the RM's scores, the usual OpenRLHF/TRL choice) or from the policy (backbone only, zero head, so
the first values are all 0 and the early advantages are the plain returns).

Checkpoints: the backbone with ``save_pretrained`` (safetensors) in ``<dir>/backbone``, the head in
``<dir>/value_head.safetensors`` and a small ``<dir>/critic.json``. Reloading the backbone through
``AutoModel.from_pretrained`` rather than a raw state dict avoids random-initialising a full model
before overwriting it, keeps non-persistent buffers (rotary tables) right, and handles tied or
shared weights, which ``safetensors.torch.save_file`` refuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from r2m.errors import ModelError
from r2m.fileio import FORMAT_KEY, ArtifactFormat, atomic_dir
from r2m.utils import torch_dtype
from r2m.models.loading import load_policy, load_reward_model
from r2m.runtime.safeio import load_safetensors as load_file, read_json

__all__ = ["ValueModel", "build_critic", "save_critic", "load_critic"]

_CRITIC_JSON = "critic.json"
_HEAD_FILE = "value_head.safetensors"
_BACKBONE_DIR = "backbone"
CRITIC_FORMAT = ArtifactFormat("PPO critic directory", 1, "train the critic again with this r2m")
"""critic.json's ``format_version``."""


def _hidden_size(backbone: nn.Module) -> int:
    config = getattr(backbone, "config", None)
    if config is None:
        raise ModelError(f"critic backbone {type(backbone).__name__}: has no Hugging Face config")
    return config.get_text_config().hidden_size


class ValueModel(nn.Module):
    """Backbone + ``value_head`` (Linear(D, 1)): per-token values V(s_t) for PPO's GAE.

    The head is float32 whatever the backbone's dtype: value targets (returns) need more precision
    than bf16's 8 bits of mantissa, and the head is tiny. Freshly built it is zero (initial values
    0); :func:`build_critic` overwrites it as asked.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(_hidden_size(backbone), 1, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @property
    def config(self) -> Any:
        """The backbone's Hugging Face config."""
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Per-token values (B, S), float32: position t is the value of the prefix ending at t."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)  # no KV cache: this is a single full forward
        hidden = out.last_hidden_state  # (B, S, D)
        return self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()  # (B, S)

    def response_values(self, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                        position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """See :func:`response_values`."""
        return response_values(self, sequences, attention_mask, prompt_len, position_ids)


def response_values(critic: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                    position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Values of the states BEFORE each response token: columns P−1 … S−2, shape (B, R), R = S − P.

    ``sequences`` are ``[left-padded prompt | right-padded response]`` (B, S) with every response
    starting at column P = ``prompt_len``. The value at column P−1+t has seen the prompt and the
    first t response tokens, i.e. the state in which response token t is chosen: the same
    alignment as the log-probs (``logits[:, P−1:−1]`` predict the response tokens). With no
    ``position_ids`` they are derived from the mask so that left padding is skipped, as in
    generation and the policy's log-prob pass.

    ``critic`` is a :class:`ValueModel` or a wrapper whose forward is its forward (DDP), so that
    gradients are synchronised across processes.
    """
    if not 1 <= prompt_len < sequences.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {sequences.shape[1] - 1}], got {prompt_len}")
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
    values = critic(sequences, attention_mask, position_ids)  # (B, S)
    return values[:, prompt_len - 1: -1]  # (B, R)


def _backbone_of(model: nn.Module, path: str) -> nn.Module:
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if not isinstance(backbone, nn.Module):
        raise ModelError(
            f"critic from {path}: {type(model).__name__} has no backbone attribute "
            f"'{getattr(model, 'base_model_prefix', None)}' (expected a decoder-only Hugging Face model)"
        )
    return backbone


def build_critic(source: str, path: str, dtype: str = "float32", trust_remote_code: bool = False) -> ValueModel:
    """A critic initialised from a reward model (``source="reward"``) or a policy (``"policy"``).

    - ``reward``: ``AutoModelForSequenceClassification`` (one label) from ``path``; the value head
      gets the ``score`` head's weight (and bias, or 0 when the head has none). The value at the
      last non-pad token of a right-padded sequence is then exactly the RM's reward.
    - ``policy``: ``AutoModelForCausalLM`` from ``path``; the LM head is dropped and the value head
      is zero, so every initial value is 0.
    """
    if source == "reward":
        model = load_reward_model(path, dtype=dtype, trust_remote_code=trust_remote_code)
        score = getattr(model, "score", None)
        if not isinstance(score, nn.Linear) or score.out_features != 1:
            raise ModelError(f"critic from {path}: expected a Linear 'score' head with one output on "
                             f"{type(model).__name__}")
        critic = ValueModel(_backbone_of(model, path))
        with torch.no_grad():
            critic.value_head.weight.copy_(score.weight.float())
            if score.bias is not None:
                critic.value_head.bias.copy_(score.bias.float())
        return critic
    if source == "policy":
        model = load_policy(path, dtype=dtype, trust_remote_code=trust_remote_code)
        return ValueModel(_backbone_of(model, path))  # zero head: initial values are 0
    raise ValueError(f"critic source must be 'reward' or 'policy', got {source!r}")


def save_critic(critic: ValueModel, directory: Union[str, Path]) -> Path:
    """Write ``critic`` into ``directory`` atomically: backbone/, value_head.safetensors, critic.json."""
    from safetensors.torch import save_file

    with atomic_dir(directory) as tmp:
        critic.backbone.save_pretrained(tmp / _BACKBONE_DIR, safe_serialization=True)
        # clone: the head's tensors must own their storage for safetensors
        head = {k: v.detach().to("cpu").clone().contiguous() for k, v in critic.value_head.state_dict().items()}
        save_file(head, str(tmp / _HEAD_FILE), metadata={"format": "pt"})
        meta = {
            **CRITIC_FORMAT.stamp(),
            "backbone_class": type(critic.backbone).__name__,
            "hidden_size": critic.value_head.in_features,
        }
        (tmp / _CRITIC_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(directory)


def load_critic(directory: Union[str, Path], dtype: str = "float32", trust_remote_code: bool = False) -> ValueModel:
    """A critic written by :func:`save_critic` (backbone in ``dtype``, head in float32), on the CPU."""
    from transformers import AutoModel

    directory = Path(directory)
    meta_path = directory / _CRITIC_JSON
    if not meta_path.is_file():
        raise ModelError(f"critic at {directory}: no {_CRITIC_JSON} (not written by save_critic, or incomplete)")
    meta = read_json(meta_path)
    CRITIC_FORMAT.check(meta.get(FORMAT_KEY), meta_path)
    backbone = AutoModel.from_pretrained(directory / _BACKBONE_DIR, dtype=torch_dtype(dtype),
                                         trust_remote_code=trust_remote_code, use_safetensors=True)
    if type(backbone).__name__ != meta["backbone_class"]:
        raise ModelError(f"critic at {directory}: backbone loaded as {type(backbone).__name__}, "
                         f"saved as {meta['backbone_class']}")
    critic = ValueModel(backbone)
    critic.value_head.load_state_dict(load_file(str(directory / _HEAD_FILE)))
    return critic
