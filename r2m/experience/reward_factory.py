"""The one place a run's reward function is built (gold, a frozen RM, R2M, or the Iterative RM-head
baseline), used by the RL run, evaluation, the demo and bench."""

from __future__ import annotations

from typing import Optional

import torch

from r2m.config.root import Config
from r2m.config.enums import RewardBaseline, RewardSource
from r2m.experience.rewards import FeedbackReward, GoldReward, ModelReward, OmegaScaledReward
from r2m.models.loading import load_reward_model, load_tokenizer
from r2m.models.r2m import build_feedback_rm
from r2m.models.reward import RewardModel
from r2m.utils import torch_dtype
from r2m.world.view import rm_prompt_view


def build_reward(cfg: Config, rm_path: Optional[str], device: torch.device, policy_dim: Optional[int] = None):
    """The run's reward function: gold, a frozen RM, R2M, or the Iterative RM-head baseline."""
    if cfg.reward.source == RewardSource.GOLD:
        return GoldReward(cfg.world)

    tok = load_tokenizer(rm_path, cfg.reward.trust_remote_code)
    model = load_reward_model(rm_path, cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                              cfg.run.allow_unsafe_weights)
    rm = RewardModel(model, tok, cfg.reward.max_length, name=f"reward model {rm_path}").to(device)
    rm.prompt_view = rm_prompt_view(cfg.world)  # the blind world: the RM reads a truncated prompt (None: all)
    r2m = cfg.reward.r2m
    rows = cfg.reward.batch_size
    if cfg.reward.baseline == RewardBaseline.SCALE_CONTROL:  # the scale control: vanilla × ω(t)
        return OmegaScaledReward(ModelReward(rm, rows), r2m.omega_floor, cfg.rl.steps)
    if not (r2m.enabled or cfg.reward.baseline == RewardBaseline.ITERATIVE_HEAD):
        return ModelReward(rm, rows)
    backbone_dtype = None if r2m.backbone_dtype == "same" else torch_dtype(r2m.backbone_dtype)
    feedback_dim = policy_dim if r2m.enabled else None  # iterative_head: no fusion
    model = build_feedback_rm(rm, feedback_dim, r2m.inner_dim, r2m.num_heads, r2m.init, backbone_dtype)
    return FeedbackReward(model, r2m, total_steps=cfg.rl.steps, batch_size=rows, seed=cfg.run.seed)
