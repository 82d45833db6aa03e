"""Model loading (Hugging Face Auto classes), the reward-model wrapper, R2M's fusion, the PPO critic.

Imports are lazy so that ``import r2m`` does not pull in transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_tokenizer": "r2m.models.loading",
    "load_policy": "r2m.models.loading",
    "load_reward_model": "r2m.models.loading",
    "build_world_lm": "r2m.models.loading",
    "save_model": "r2m.models.loading",
    "build_policy_and_reference": "r2m.models.loading",
    "apply_lora": "r2m.models.lora",
    "enable_gradient_checkpointing": "r2m.models.lora",
    "AdapterFreeReference": "r2m.models.lora",
    "merged_copy": "r2m.models.lora",
    "RewardModel": "r2m.models.reward",
    "omega": "r2m.models.fusion",
    "PolicyFeedbackFusion": "r2m.models.fusion",
    "FeedbackRewardModel": "r2m.models.r2m",
    "build_feedback_rm": "r2m.models.r2m",
    "load_feedback_rm": "r2m.models.r2m",
    "ValueModel": "r2m.models.critic",
    "build_critic": "r2m.models.critic",
    "save_critic": "r2m.models.critic",
    "load_critic": "r2m.models.critic",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'r2m.models' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
