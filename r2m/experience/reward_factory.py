"""The one place a run's reward function is built (gold, a frozen RM, an RM ensemble, the gold-mixed proxy, R2M, or
the Iterative RM-head baseline), used by the RL run, evaluation, the demo and bench."""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional, Sequence

import torch

from r2m.config.enums import RewardBaseline, RewardSource
from r2m.config.root import Config
from r2m.core.ensembles import EnsembleParams, Moments, moments
from r2m.errors import ConfigError
from r2m.experience.rewards import (
    EnsembleReward,
    FeedbackReward,
    GoldMixedReward,
    GoldReward,
    ModelReward,
    OmegaScaledReward,
    RewardQuery,
)
from r2m.models.loading import load_reward_model, load_tokenizer
from r2m.models.r2m import build_feedback_rm
from r2m.models.reward import RewardModel
from r2m.utils import torch_dtype
from r2m.world.view import rm_prompt_view

log = logging.getLogger("r2m")

CALIBRATION_PAIRS = 256
"""Preference pairs of data.pref_eval whose two responses are the calibration rows (:class:`Calibration`)."""


class Calibration(NamedTuple):
    """The fixed rows an ensemble's members and the gold-mixed proxy's two terms are put on one scale on: both
    responses of the first :data:`CALIBRATION_PAIRS` pairs of data.pref_eval (in the world: held-out prompts on
    world.seed, whatever world.rm_seed is, with responses of the SFT mixture's kinds)."""

    prompts: list[str]
    responses: list[str]
    source: str
    """Where the rows come from (for messages)."""

    @classmethod
    def from_pairs(cls, rows: Sequence[dict], source: str) -> "Calibration":
        rows = list(rows)[:CALIBRATION_PAIRS]
        return cls([r["prompt"] for r in rows for _ in (0, 1)],
                   [resp for r in rows for resp in (r["chosen"], r["rejected"])], source)

    def moments(self, reward_fn, what: str) -> Moments:
        """Mean and SD of ``reward_fn`` on these rows."""
        try:
            return moments(reward_fn(RewardQuery(self.prompts, self.responses)).scores)
        except ValueError as e:
            raise ValueError(f"{what} on the calibration rows ({len(self.responses)} responses of {self.source}): "
                             f"{e}") from e


def _load_rm(cfg: Config, path: str, device: torch.device) -> RewardModel:
    tok = load_tokenizer(path, cfg.reward.trust_remote_code)
    model = load_reward_model(path, cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                              cfg.run.allow_unsafe_weights)
    rm = RewardModel(model, tok, cfg.reward.max_length, name=f"reward model {path}").to(device)
    rm.prompt_view = rm_prompt_view(cfg.world)  # the blind world: the RM reads a truncated prompt (None: all)
    return rm


def build_reward(cfg: Config, rm_path: Optional[str], device: torch.device, policy_dim: Optional[int] = None,
                 members: Sequence[str] = (), calibration: Optional[Calibration] = None):
    """The run's reward function: gold, a frozen RM (or the ensemble of ``members``' RMs), mixed with gold by
    reward.gold_mix, R2M, or an RM baseline. ``calibration``: the rows an ensemble and the gold mix are scaled on
    (needed for those)."""
    if cfg.reward.source == RewardSource.GOLD:
        return GoldReward(cfg.world)
    if (cfg.reward.gold_mix or cfg.reward.ensembled) and (calibration is None or not calibration.responses
                                                         or bool(members) != cfg.reward.ensembled):
        raise ConfigError("reward.gold_mix / reward.ensemble / reward.ensemble_seeds: read by `r2m rl` (its run "
                          "resolves the members and the calibration rows, data.pref_eval); this command takes one RM")
    rows = cfg.reward.batch_size
    if members:
        frozen = _ensemble(cfg, members, device, calibration)
    else:
        rm = _load_rm(cfg, rm_path, device)
        if cfg.reward.baseline == RewardBaseline.SCALE_CONTROL:  # the scale control: vanilla × ω(t)
            return OmegaScaledReward(ModelReward(rm, rows), cfg.reward.r2m.omega_floor, cfg.rl.steps)
        if cfg.reward.r2m.enabled or cfg.reward.baseline == RewardBaseline.ITERATIVE_HEAD:
            return _feedback(cfg, rm, policy_dim)
        frozen = ModelReward(rm, rows)
    if not cfg.reward.gold_mix:
        return frozen
    gold = GoldReward(cfg.world)
    rm_m, gold_m = calibration.moments(frozen, "reward.gold_mix: the RM"), calibration.moments(gold, "gold")
    log.info("reward.gold_mix=%g: gold (mean %.4g, SD %.4g) on the RM's scale (mean %.4g, SD %.4g) on %d "
             "calibration responses", cfg.reward.gold_mix, gold_m.mean, gold_m.std, rm_m.mean, rm_m.std,
             len(calibration.responses))
    return GoldMixedReward(frozen, gold, cfg.reward.gold_mix, rm_m, gold_m)


def _ensemble(cfg: Config, members: Sequence[str], device: torch.device, calibration: Calibration) -> EnsembleReward:
    """The members' frozen RMs, each standardised on the calibration rows, combined per reward.ensemble_mode."""
    fns = [ModelReward(_load_rm(cfg, p, device), cfg.reward.batch_size) for p in members]
    scales = [calibration.moments(fn, f"reward.ensemble: member {p}")
              for fn, p in zip(fns, members, strict=True)]
    log.info("RM ensemble (%s) of %d members, standardised on %d calibration responses: %s",
             cfg.reward.ensemble_mode.value, len(fns), len(calibration.responses),
             ", ".join(f"{m.mean:.3g}±{m.std:.3g}" for m in scales))
    return EnsembleReward(fns, cfg.reward.ensemble_mode, scales, EnsembleParams(cfg.reward.ensemble_uwo_lambda))


def _feedback(cfg: Config, rm: RewardModel, policy_dim: Optional[int]) -> FeedbackReward:
    """R2M's reward (with the policy's width ``policy_dim``), or the Iterative RM-head baseline's (no fusion)."""
    r2m = cfg.reward.r2m
    backbone_dtype = None if r2m.backbone_dtype == "same" else torch_dtype(r2m.backbone_dtype)
    feedback_dim = policy_dim if r2m.enabled else None  # iterative_head: no fusion
    model = build_feedback_rm(rm, feedback_dim, r2m.inner_dim, r2m.num_heads, r2m.init, backbone_dtype)
    return FeedbackReward(model, r2m, total_steps=cfg.rl.steps, batch_size=cfg.reward.batch_size, seed=cfg.run.seed)
