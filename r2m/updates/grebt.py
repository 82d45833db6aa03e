"""GREBT: R2M's lightweight reward-model optimisation after each policy step (Algorithm 1, lines 15-20).

    r'_ij = r_φ(x_i, y_ij, h_ij) with the refreshed h and ω(t)       (h from the last policy epoch)
    (w, l) = argmax_j r'_ij, argmin_j r'_ij                           per group G_i
    L_GREBT = mean_i [(1 - α) L_BT(i) + α L_GRE(i)]                   (Eq. 5-7)

Only the fusion module and the head φ receive gradients. The reward token embeddings H_last come
from annotation (the backbone is frozen), so the update never runs the RM backbone.

The refreshed h is the policy's last-layer states from the last epoch of its update: the policy update hands back
the states of the rows it trained (:meth:`GREBTUpdater.keep_states` says what is kept of them: h, in the hidden
store), and :meth:`GREBTUpdater.update` reads them.

The update runs over chunks of whole groups (``reward.r2m.fusion_batch_size`` rows), accumulating each
chunk's share of the gradient, so its loss and gradient are the whole batch's while the fusion holds one
chunk's h (in float32) at a time.

The Iterative RM-head baseline is the same update on a model without fusion: GREBT on the
annotation-time scores φ(H_last), updating the head only (R2M paper Appendix G.5).

With N processes each rank holds a copy of the RM and the groups it sampled; the module is not
wrapped in DDP (the frozen backbone never runs here), so its gradients are averaged explicitly:
the mean over ranks of per-rank group means is the global group mean (equal groups per rank).
"""

from __future__ import annotations

from typing import Optional

import torch

from r2m.config.enums import PairChoice
from r2m.config.models import R2MConfig
from r2m.core.losses import grebt_terms, within_group_spread
from r2m.core.pair_choice import WinnerLoser, choose_pair, pair_seed
from r2m.experience.rewards import R2MSchedule
from r2m.experience.rollout import Experience, HiddenStore
from r2m.models.r2m import FeedbackRewardModel
from r2m.runtime.distributed import Dist


class GREBTUpdater:
    """Owns the RM optimiser; ``update(exp, h)`` runs ``updates_per_step`` GREBT steps on the fusion and head of
    ``model``. ``schedule``: ω(t), the w/ Noise view of h and the seed, shared with R2M's reward. ``store``: where
    and in which dtype h is kept (the rollout's :class:`HiddenStore`)."""

    def __init__(self, model: FeedbackRewardModel, schedule: R2MSchedule, cfg: R2MConfig, dist: Dist = Dist(),
                 store: HiddenStore = HiddenStore()):
        self.model, self.schedule, self.cfg, self.store = model, schedule, cfg, store
        self.params = list(self.model.trainable_parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.dist = dist
        dist.broadcast_parameters(self.params)  # one starting point on every rank

    @property
    def reads_hidden(self) -> bool:
        """Whether the update reads h (R2M; the Iterative RM-head baseline has no fusion)."""
        return self.model.fusion is not None

    def keep_states(self, states: torch.Tensor) -> torch.Tensor:
        """R2M's h from a training pass's last-layer states (b, P+R, D_p): (b, P+R-1, D_p) in the hidden store, each
        row's states without the batch's last column (:func:`r2m.models.feedback.feedback_states`; the rollout's
        ``policy_mask`` marks each row's own positions)."""
        return self.store.states(states)

    def group_chunks(self, exp: Experience) -> list[slice]:
        """Slices of whole groups, ``reward.r2m.fusion_batch_size`` rows at most (at least one group) per chunk."""
        groups = max(1, self.cfg.fusion_batch_size // exp.k)
        return [slice(i * exp.k, min(i + groups, exp.n) * exp.k) for i in range(0, exp.n, groups)]

    def rescore(self, exp: Experience, h: torch.Tensor | None, rows: slice = slice(None)) -> torch.Tensor:
        """r' over the groups in ``rows``, (n_rows / K, K), with gradients into the fusion module and head."""
        w = self.schedule.omega(exp.step)
        mask = exp.policy_mask[rows] if exp.policy_mask is not None else None
        return self.model.score_embeddings(exp.rm_embeddings[rows], h[rows] if h is not None else None, mask,
                                           w).view(-1, exp.k)

    def update(self, exp: Experience, policy_hidden: Optional[torch.Tensor]) -> dict[str, float]:
        """R2M's per-step RM update (GREBT, R2M paper Eq. 5-7) with ``policy_hidden`` (B, S-1, D_p): h from the
        states the policy update kept in its last epoch (:meth:`keep_states`), or the rollout's."""
        if exp.rm_embeddings is None:
            raise ValueError("R2M update: the experience has no reward token embeddings (rm_embeddings)")
        cfg = self.cfg
        stats: dict[str, float] = {"r2m/omega": self.schedule.omega(exp.step)}
        if not cfg.trains:
            return stats
        self.model.train()
        h = self.schedule.hidden(policy_hidden, exp.policy_mask, exp.step) if self.reads_hidden else None
        for _ in range(cfg.updates_per_step):
            self.optimizer.zero_grad(set_to_none=True)
            step = self.grebt_step(exp, h)
            self.dist.average_gradients(self.params)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
        self.model.eval()
        with torch.no_grad():
            after = torch.cat([self.rescore(exp, h, rows) for rows in self.group_chunks(exp)])  # (n, K)
        stats.update(self.scale_stats(exp, h, after))
        stats.update({
            "r2m/grebt": step["loss"], "r2m/bt": step["bt"], "r2m/gre": step["gre"],
            "r2m/grad_norm": float(grad_norm), "r2m/reward_before": step["reward"],
            "r2m/reward_after": after.mean().item(),
            "r2m/group_spread": (after.max(-1).values - after.min(-1).values).mean().item(),
        })
        return self.dist.mean_stats(stats)

    def grebt_step(self, exp: Experience, h: Optional[torch.Tensor]) -> dict[str, float]:
        """The gradient of L_GREBT over all n groups into the parameters, a chunk of whole groups at a time: each
        chunk's loss (its groups' mean) is weighted by its share of the groups, so the summed gradients are the whole
        batch's. Returns the loss, its BT and GRE parts and the mean reward r' before the step."""
        pair = self.pair(exp, torch.empty(exp.n, exp.k, device=exp.rm_embeddings.device))  # (n,) each, or None
        sums = dict.fromkeys(("loss", "bt", "gre", "reward"), 0.0)
        for rows in self.group_chunks(exp):
            r = self.rescore(exp, h, rows)  # (g, K)
            g0, g = rows.start // exp.k, r.shape[0]
            part = None if pair is None else WinnerLoser(pair.winner[g0: g0 + g], pair.loser[g0: g0 + g])
            terms = grebt_terms(r, self.cfg.effective_alpha, self.cfg.gre_eps, pair=part)
            share = g / exp.n
            # A plain backward: this module is outside accelerate's prepare (an accelerate backward would
            # step a DeepSpeed policy engine, or scale by an fp16 scaler that never unscales these grads).
            (terms.loss * share).backward()
            for key, value in (("loss", terms.loss.item()), ("bt", float(terms.bt)), ("gre", float(terms.gre)),
                               ("reward", r.detach().mean().item())):
                sums[key] += value * share
        return sums

    def pair(self, exp: Experience, r: torch.Tensor) -> WinnerLoser | None:
        """The winner/loser of each group per ``reward.r2m.pair_choice``; None for ``self``, whose argmax/argmin
        grebt_terms takes itself (the paper's update). ``r`` (n, K): the scores, whose
        values only ``self`` would read (``gold`` reads the gold reward, ``random`` the step's seed)."""
        choice = self.cfg.pair_choice
        if PairChoice(choice) is PairChoice.SELF:
            return None
        gold = exp.gold.view(exp.n, exp.k) if exp.gold is not None else None  # (n, K)
        gen = torch.Generator().manual_seed(pair_seed(self.schedule.seed, exp.step))
        return choose_pair(choice, r, gold, gen)

    @torch.no_grad()
    def scale_stats(self, exp: Experience, h: torch.Tensor | None, r: torch.Tensor) -> dict[str, float]:
        """What sets the reward's scale after the update: the fusion term's share of the within-group
        spread, s_f / (s_f + s_e) with s_f, s_e the spreads of (1 − ω)·w·Ĥ and ω·w·H_last; the head's
        norm ‖w‖; and the std of r' over the batch. GREBT's BT term keeps falling as scores are scaled
        up, so these show whether a run's reward grows by learning or by inflation."""
        out = {"r2m/head_norm": self.model.head.weight.float().norm().item(), "r2m/reward_std": r.std().item()}
        if h is not None:
            parts = self.model.score_parts(exp.rm_embeddings, h, exp.policy_mask, self.schedule.omega(exp.step),
                                           self.cfg.fusion_batch_size)
            s_f, s_e = within_group_spread(parts.fusion, exp.k), within_group_spread(parts.embedding, exp.k)
            out.update({"r2m/fusion_share": (s_f / (s_f + s_e)).item() if s_f + s_e > 0 else 0.0,
                        "r2m/fusion_spread": s_f.item(), "r2m/rte_spread": s_e.item()})
        return out
