"""Reward functions for RL: a learned (proxy) reward model, R2M, or the world's gold reward.

All take a :class:`RewardQuery` (texts; each model tokenises them itself, so the policy and the
reward model may use different tokenizers) and return a :class:`RewardOutput`. A reward function
with ``needs_policy_hidden = True`` also reads the policy's last-layer hidden states (R2M).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional, Protocol, Sequence

import torch

from r2m.config.enums import R2MAblation
from r2m.config.models import R2MConfig
from r2m.config.run import WorldConfig
from r2m.models.fusion import omega
from r2m.models.reward import DEFAULT_BATCH_SIZE
from r2m.world.task import gold_rewards, parse_prompt

log = logging.getLogger("r2m")


@dataclass(frozen=True)
class RewardQuery:
    """What a reward function sees for a batch of B sequences."""

    prompts: Sequence[str]
    """(B,) prompt texts (repeated for the K samples of a group)."""
    responses: Sequence[str]
    """(B,) response texts, up to and including the end-of-sequence token."""
    policy_hidden: Optional[torch.Tensor] = None
    """(B, S-1, D_p) the policy's last-layer hidden states over prompt + response (R2M's h)."""
    policy_mask: Optional[torch.Tensor] = None
    """(B, S-1) 1 on real (non-pad) positions of ``policy_hidden``."""
    step: int = 0
    """Training round t (0-based) for R2M's ω(t)."""
    group_size: int = 0
    """K when rows are prompt-major groups of K samples (a rollout batch); 0 when they are not (evaluation)."""
    response_ids: Optional[Sequence[Sequence[int]]] = None
    """(B,) each response's sampled policy tokens (TRL's ``completion_ids``), when the caller has them."""
    rm_embeddings: Optional[torch.Tensor] = None
    """(B, D_m) H_last of the rows under R2M's reward model, when computed already for this batch (init=matched's
    calibration computes them first): R2M's reward reads them instead of running its backbone again."""


class RewardOutput(NamedTuple):
    scores: torch.Tensor
    """(B,) rewards."""
    embeddings: Optional[torch.Tensor] = None
    """(B, D_m) the RM's reward token embeddings H_last (R2M keeps them for its update), or None."""
    vanilla: Optional[torch.Tensor] = None
    """(B,) the unmodified RM's reward on the same texts, when this function modifies an RM (R2M)."""


class RewardFunction(Protocol):
    needs_policy_hidden: bool
    reward_model: Optional["r2m.models.reward.RewardModel"]  # noqa: F821  (the RM it reads, None for gold)

    def __call__(self, query: RewardQuery) -> RewardOutput:
        ...


class ModelReward:
    """A frozen sequence-classification reward model."""

    needs_policy_hidden = False

    def __init__(self, rm: "r2m.models.reward.RewardModel", batch_size: int = DEFAULT_BATCH_SIZE):  # noqa: F821
        self.rm = self.reward_model = rm.eval().requires_grad_(False)
        self.batch_size = batch_size

    def __call__(self, query: RewardQuery) -> RewardOutput:
        return RewardOutput(self.rm.score_texts(query.prompts, query.responses, self.batch_size), None)


class GoldReward:
    """The gold-reward world's true reward (only defined on world prompts)."""

    needs_policy_hidden = False
    reward_model = None

    def __init__(self, world: WorldConfig):
        self.world = world

    def __call__(self, query: RewardQuery) -> RewardOutput:
        scores = torch.tensor(gold_rewards(list(query.prompts), list(query.responses), self.world), dtype=torch.float32)
        return RewardOutput(scores, None)


def noise_like(h: torch.Tensor, mask: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Gaussian noise with the per-dimension mean and std of the valid entries of h (R2M w/ Noise).

    h (B, S, D), mask (B, S) -> (B, S, D). Each of the D feature dimensions keeps its own location and
    scale (hidden states have a few dimensions of very large magnitude): one scalar mean/std over all
    dimensions would make the noise easier to tell from h than the ablation intends.
    """
    valid = h[mask.bool()].float()  # (n_valid, D)
    mean, std = valid.mean(dim=0), valid.std(dim=0)  # (D,), (D,)
    z = torch.randn(h.shape, dtype=torch.float32, generator=generator, device="cpu" if generator else h.device)
    return (z.to(h.device) * std + mean).to(h.dtype)  # (B, S, D)


def noise_seed(seed: int, step: int) -> int:
    """The w/ Noise draw of training round ``step``: one per round, whatever reads it (see R2MSchedule.hidden)."""
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


@dataclass
class R2MSchedule:
    """What R2M's reward and its GREBT update both read at training round t: the weight ω(t) of H_last against the
    fusion (R2M paper Eq. 4, over ``total_steps`` with floor ``omega_floor``), and h as the RM sees it."""

    omega_floor: float
    total_steps: int
    ablation: R2MAblation = R2MAblation.NONE
    seed: int = 0
    """The run's seed: the w/ Noise draw of each round, and the random winner/loser choice, derive from it."""

    def omega(self, step: int) -> float:
        return omega(step, self.total_steps, self.omega_floor)

    def hidden(self, h: Optional[torch.Tensor], mask: Optional[torch.Tensor], step: int) -> Optional[torch.Tensor]:
        """h as the RM sees it: itself, or (w/ Noise) noise with h's per-dimension mean and std.

        The noise of round ``step`` comes from a generator seeded by (run.seed, step): annotation and the
        RM update of one round read the same standard-normal draw (each rescaled by the statistics of
        the h it replaces), just as real R2M's annotation h and refreshed h are nearly the same states.
        The draw touches no global RNG stream, so the ablation leaves sampling unchanged.
        """
        if h is None or self.ablation != R2MAblation.NOISE:
            return h
        return noise_like(h, mask, torch.Generator().manual_seed(noise_seed(self.seed, step)))


class FeedbackReward:
    """R2M's reward r_φ(x, y, h) = φ((1 - ω(t)) Ĥ + ω(t) H_last) (R2M paper Eq. 3-4), or the Iterative RM-head
    baseline φ(H_last) when the model has no fusion. Scoring never changes the model: init=matched's rescaling of
    W_o is :meth:`calibrate`, which the caller runs on the first rollout batch."""

    def __init__(self, model: "r2m.models.r2m.FeedbackRewardModel", cfg: R2MConfig, total_steps: int,  # noqa: F821
                 batch_size: int = DEFAULT_BATCH_SIZE, seed: int = 0):
        self.model, self.cfg = model, cfg
        self.schedule = R2MSchedule(cfg.omega_floor, total_steps, cfg.ablation, seed)
        self.batch_size = batch_size
        """Rows per RM backbone forward (``reward.batch_size``); the fusion reads ``reward.r2m.fusion_batch_size``."""
        self.needs_policy_hidden = model.fusion is not None
        self.reward_model = model.rm
        self.calibration: Optional[float] = None
        """init=matched: the factor W_o was rescaled by on the first rollout batch (None before, or never)."""

    def omega(self, step: int) -> float:
        return self.schedule.omega(step)

    def embed(self, query: RewardQuery) -> torch.Tensor:
        """H_last of the rows, (B, D_m) float32: the frozen backbone's pass (or the query's, when it has them)."""
        if query.rm_embeddings is not None:
            return query.rm_embeddings
        return self.model.embed_texts(query.prompts, query.responses, self.batch_size)

    def hidden(self, query: RewardQuery) -> Optional[torch.Tensor]:
        """h as the RM reads it for this query (None without fusion)."""
        if not self.needs_policy_hidden:
            return None
        return self.schedule.hidden(query.policy_hidden, query.policy_mask, query.step)

    def calibrates(self, query: RewardQuery) -> bool:
        """Whether init=matched still has to rescale W_o and ``query`` can do it: a rollout batch (groups of K >= 2)
        with h, and a fusion not yet calibrated (the flag is saved with the weights: never twice)."""
        fusion = self.model.fusion
        return (fusion is not None and not bool(fusion.calibrated) and query.group_size >= 2
                and query.policy_hidden is not None)

    @torch.no_grad()
    def calibrate(self, query: RewardQuery) -> RewardQuery:
        """init=matched: rescale W_o once so that φ(Ĥ) has φ(H_last)'s within-group spread on this rollout batch.
        Returns ``query`` with the H_last computed for it, so that scoring the batch reads them."""
        rte = self.embed(query)  # (B, D_m)
        factor = self.model.calibrate(rte, self.hidden(query), query.policy_mask, query.group_size,
                                      self.cfg.fusion_batch_size)
        if factor is not None:
            self.calibration = factor
            log.info("reward.r2m.init=matched: W_o rescaled by %.4g on the first rollout batch", factor)
        return replace(query, rm_embeddings=rte)

    @torch.no_grad()
    def __call__(self, query: RewardQuery) -> RewardOutput:
        rte = self.embed(query)  # (B, D_m)
        scores = self.model.score_rows(rte, self.hidden(query), query.policy_mask, self.omega(query.step),
                                       self.cfg.fusion_batch_size)
        return RewardOutput(scores.float(), rte, self.model.vanilla_score(rte))


class OmegaScaledReward:
    """The benchmark's scale control: the frozen RM's reward times R2M's ω(t), and nothing else.

    At init R2M's fusion term is tiny, so frozen R2M ("w/o Train") scores about ω(t) × vanilla; this arm
    isolates that rescaling (a larger effective KL coefficient, smaller advantages) from any use of h.
    ω(t) is R2M's schedule (reward.r2m.omega_floor over rl.steps), read at the query's training round.
    """

    needs_policy_hidden = False

    def __init__(self, inner: ModelReward, omega_floor: float, total_steps: int):
        self.inner, self.omega_floor, self.total_steps = inner, omega_floor, total_steps
        self.reward_model = inner.reward_model

    def omega(self, step: int) -> float:

        return omega(step, self.total_steps, self.omega_floor)

    def __call__(self, query: RewardQuery) -> RewardOutput:
        vanilla = self.inner(query).scores  # (B,)
        return RewardOutput(vanilla * self.omega(query.step), None, vanilla)


class WeightedRewards:
    """Σ_i w_i r_i over reward functions (TRL's ``reward_funcs`` with ``reward_weights``). The first is the primary:
    its reward model, h and R2M state are the run's (embeddings, vanilla and ``omega`` come from it)."""

    def __init__(self, terms: Sequence[tuple[float, "RewardFunction"]]):
        self.terms = list(terms)
        self.primary = self.terms[0][1]
        self.reward_model = self.primary.reward_model
        self.needs_policy_hidden = any(fn.needs_policy_hidden for _, fn in self.terms)

    def __getattr__(self, name: str):  # omega, model, cfg, ...: the primary's (R2M's schedule)
        if name in ("terms", "primary"):
            raise AttributeError(name)
        return getattr(self.primary, name)

    def __call__(self, query: RewardQuery) -> RewardOutput:
        # H_last in the query are the primary's (R2M's RM): the other terms score the texts themselves.
        outs = [fn(query if i == 0 else replace(query, rm_embeddings=None)) for i, (_, fn) in enumerate(self.terms)]
        weighted = torch.stack([w * out.scores.float().cpu() for (w, _), out in zip(self.terms, outs)])  # (F, B)
        scores = weighted.nansum(0)  # a NaN score is "not applicable" (TRL's None); all NaN: NaN (unscorable)
        scores[weighted.isnan().all(0)] = float("nan")
        return RewardOutput(scores, outs[0].embeddings, outs[0].vanilla)


def is_world_prompt_set(prompts: Sequence[str]) -> bool:
    """True when every prompt parses as a gold-reward-world prompt (so gold can be logged)."""
    try:
        for p in prompts:
            parse_prompt(p)
    except ValueError:
        return False
    return True
