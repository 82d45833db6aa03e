"""The R2M update tests' shared setup (test_r2m.py, test_r2m_controls.py): a tiny world RM on disk, a RewardModel on
it, and one rollout of a tiny policy scored by R2M's feedback reward (``r2m_bed``)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from r2m.config.models import ArchConfig, R2MConfig
from r2m.config.training import RLConfig
from r2m.config.run import WorldConfig
from r2m.experience.rewards import FeedbackReward, GoldReward
from r2m.experience.rollout import Experience, ExperienceMaker
from r2m.experience.sampling import tokenize_prompts
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.models.r2m import build_feedback_rm
from r2m.models.reward import RewardModel
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt

PROMPTS = [format_prompt(d) for d in ([3, 1, 2], [9, 0, 4, 4], [5, 5, 1], [7, 2, 8, 1, 0])]
D_P, D_M = 32, 24  # heterogeneous widths, and the two models have different tokenizers


class Rollout(NamedTuple):
    policy: torch.nn.Module
    reward: FeedbackReward
    exp: Experience
    """One experience batch at step 3 (of total_steps=10)."""


class R2MBed:
    """The world RM at ``rm_dir`` and the rollouts the tests score with it."""

    prompts, d_p, d_m = PROMPTS, D_P, D_M

    def __init__(self, rm_dir: Path):
        self.rm_dir = rm_dir

    def rm(self) -> RewardModel:
        tok = load_tokenizer(str(self.rm_dir))
        torch.manual_seed(7)  # the new score head
        return RewardModel(load_reward_model(str(self.rm_dir), pad_token_id=tok.pad_token_id), tok)

    def rollout(self, r2m: R2MConfig, rl: RLConfig, feedback: bool = True, gold: bool = True,
                seed: int = 0) -> Rollout:
        """A fresh policy (seed 0) and feedback RM (``feedback``: fused with the policy's h); ``seed``: the reward's."""
        torch.manual_seed(0)
        ptok = build_tokenizer("policy")
        policy = build_world_lm(ArchConfig(hidden_size=D_P, num_layers=1, num_heads=2, intermediate_size=64), ptok, 0)
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
        model = build_feedback_rm(self.rm(), D_P if feedback else None, 16, 2, r2m.init)
        reward = FeedbackReward(model, r2m, total_steps=10, seed=seed)
        maker = ExperienceMaker(policy, ref, ptok, reward, rl, torch.device("cpu"),
                                gold_fn=GoldReward(WorldConfig()) if gold else None)
        prompts = tokenize_prompts(ptok, PROMPTS, 64, "truncate")
        return Rollout(policy, reward, maker.make(prompts.texts, prompts.ids, step=3))


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> Path:
    tok = build_tokenizer("rm")
    lm = build_world_lm(ArchConfig(hidden_size=D_M, num_layers=1, num_heads=2, intermediate_size=48), tok, seed=1)
    out = tmp_path_factory.mktemp("rm") / "lm"
    save_model(lm, tok, out)
    return out


@pytest.fixture
def r2m_bed(rm_dir) -> R2MBed:
    return R2MBed(rm_dir)
