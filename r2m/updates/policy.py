"""The policy update: k epochs of clipped-surrogate minibatch updates on one Experience (R2M paper Eq. 2),
and the critic's clipped value loss for PPO. Micro-batches accumulate gradients."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, NamedTuple, Optional

import torch

from r2m.config.enums import KLMode
from r2m.config.training import RLConfig
from r2m.core.losses import POLICY_LOSSES, aggregate, clipped_value_loss, kl_penalty, masked_mean
from r2m.experience.rollout import Experience
from r2m.models.critic import response_values
from r2m.models.logprobs import real_columns, response_forward
from r2m.runtime.distributed import Dist

log = logging.getLogger("r2m")


class MicroStep(NamedTuple):
    loss: torch.Tensor
    stats: dict
    states: Optional[torch.Tensor]  # (b, P+R, D) the pass's last-layer states, when asked for


class OptimizerStep(NamedTuple):
    grad_norm: float
    applied: bool  # False when a NaN/inf loss or gradient made the step be skipped


class PolicyUpdate(NamedTuple):
    stats: dict[str, float]
    """Means over the minibatches (and ranks) of the update's statistics."""
    states: Optional[torch.Tensor]
    """(B, ...) what ``keep_states`` kept of each row's last-layer states in the last epoch's training forward
    pass (a new tensor); None when the update was not asked to keep them."""


class PolicyUpdater:
    """k epochs of minibatch updates on one :class:`Experience` (and the critic's, for PPO)."""

    def __init__(self, policy, optimizer, accelerator, cfg: RLConfig, critic=None, critic_optimizer=None,
                 dist: Dist = Dist()):
        self.policy, self.optimizer, self.accelerator, self.cfg = policy, optimizer, accelerator, cfg
        self.critic, self.critic_optimizer = critic, critic_optimizer
        self.dist = dist

    def _micro_loss(self, mb: Experience, num_tokens: float, num_seqs: int, with_hidden: bool,
                    beta: float) -> MicroStep:
        cfg = self.cfg
        fwd = response_forward(self.policy, mb.sequences, mb.attention_mask, mb.prompt_len, cfg.temperature,
                               with_entropy=True, with_hidden=with_hidden)
        mask = mb.action_mask.float()  # (b, R)
        norms = dict(num_tokens=num_tokens, num_seqs=num_seqs, horizon=cfg.max_new_tokens)
        pg = POLICY_LOSSES[cfg.ratio_level](fwd.logprobs, mb.old_logprobs, mb.advantages, mask, cfg.clip_eps,
                                            cfg.aggregation, **norms, clip_eps_high=cfg.clip_eps_high,
                                            clip_ratio_c=cfg.clip_ratio_c)
        loss = pg.loss
        if cfg.kl_mode == KLMode.LOSS and beta > 0:
            kl = kl_penalty(fwd.logprobs, mb.ref_logprobs, cfg.kl_estimator, mask)  # (b, R)
            loss = loss + beta * aggregate(kl, mask, cfg.aggregation, **norms)
        # Token means of this part, weighted by its share of the (global) tokens: they add up over
        # micro-batches and ranks to the minibatch's token means.
        w = mask.sum().item() / num_tokens if num_tokens else 0.0
        stats = {"loss/policy": pg.loss.item(), "policy/clip_frac": pg.clip_fraction.item() * w,
                 "policy/approx_kl": pg.approx_kl.item() * w,
                 "policy/entropy": masked_mean(fwd.entropy, mask).item() * w}
        if self.critic is not None:
            values = self._values(mb)  # (b, R)
            vl = clipped_value_loss(values, mb.values, mb.returns, mask, cfg.value_clip, cfg.aggregation, **norms)
            # Separate parameters and optimisers: one backward serves both.
            loss = loss + vl.loss
            stats.update({"loss/value": vl.loss.item(), "critic/clip_frac": vl.clip_fraction.item() * w})
        return MicroStep(loss, stats, fwd.hidden)

    def _values(self, mb: Experience) -> torch.Tensor:
        """The critic's values (b, R) before each response token, its forward cut to the rows' widest row."""
        cols = real_columns(mb.attention_mask, mb.prompt_len)
        values = response_values(self.critic, cols.cut(mb.sequences), cols.cut(mb.attention_mask), cols.cut_prompt_len)
        return cols.response(values)  # (b, R)

    def update(self, exp: Experience, beta: Optional[float] = None,
               keep_states: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> PolicyUpdate:
        """k epochs over ``exp`` of the clipped surrogate (R2M paper Eq. 2); ``beta`` is the current KL coefficient
        (default ``rl.beta``).

        ``keep_states``: also return the last-layer states of the last epoch's training forward passes, mapped by
        ``keep_states`` a micro-batch at a time ((b, P+R, D) -> what is kept of them), so the whole batch's states
        never exist on the device at once. Every row is in one minibatch of an epoch, so every row is kept once.
        """
        cfg = self.cfg
        beta = cfg.beta if beta is None else beta
        mb_size = exp.batch_size // cfg.minibatches
        self.policy.train()
        per_minibatch: list[dict[str, float]] = []
        kept = _RowStates(exp.batch_size, keep_states) if keep_states is not None else None
        for epoch in range(cfg.epochs):
            into = kept if epoch == cfg.epochs - 1 else None
            for rows in torch.randperm(exp.batch_size).split(mb_size):
                per_minibatch.append(self._minibatch(exp, rows, into, beta))
        out = {k: sum(m[k] for m in per_minibatch) / len(per_minibatch) for k in per_minibatch[0]}
        out = self.dist.mean_stats(out)  # each rank's loss is its share of the global loss
        out["guard/skipped_minibatches"] = out["guard/skipped_minibatches"] * len(per_minibatch)
        return PolicyUpdate(out, kept.states if kept is not None else None)

    def _minibatch(self, exp: Experience, rows: torch.Tensor, into: Optional["_RowStates"],
                   beta: float) -> dict[str, float]:
        """One optimiser step over the minibatch ``rows``, accumulated over micro-batches; with ``into``, the
        micro-batches' last-layer states are kept there."""
        mb = exp.select(rows)
        # Global normalisers: the sum of micro-batch losses equals the whole minibatch's loss, and with
        # N processes each rank normalises by 1/N of the global count, since DDP averages gradients.
        num_tokens, num_seqs = self.dist.share(mb.action_mask.sum().item()), self.dist.share(mb.batch_size)
        micro = self.cfg.micro_batch_size or mb.batch_size
        sums: dict[str, float] = {}
        parts = torch.arange(mb.batch_size).split(micro)
        for i, part in enumerate(parts):
            # Gradients are all-reduced once per minibatch, on its last micro-batch.
            with self._no_sync(last=i == len(parts) - 1):
                step = self._micro_loss(mb.select(part), num_tokens, num_seqs, into is not None, beta)
                self.accelerator.backward(step.loss)
            if into is not None:
                into.put(rows[part], step.states)
            for k, v in {**step.stats, "loss/total": step.loss.item()}.items():
                sums[k] = sums.get(k, 0.0) + v
        stats = sums  # every statistic is a part of one sum (see _micro_loss)
        grad_norm, applied = self._optimizer_step(stats["loss/total"])
        return {**stats, "policy/grad_norm": grad_norm, "guard/skipped_minibatches": float(not applied)}

    def _no_sync(self, last: bool):
        if last or not self.dist.enabled:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for model in (self.policy, self.critic):
            if model is not None:
                stack.enter_context(self.accelerator.no_sync(model))
        return stack

    def _optimizer_step(self, loss: float) -> "OptimizerStep":
        """Clip, then step policy (and critic) unless the loss or gradient is NaN/inf."""
        cfg, acc = self.cfg, self.accelerator
        norm = acc.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        # DeepSpeed clips inside its engine step (taken in backward) and may report no norm.
        grad_norm = float("nan") if norm is None else float(norm)
        finite = math.isfinite(loss) and (norm is None or math.isfinite(grad_norm))
        if self.critic is not None:
            finite = finite and math.isfinite(float(acc.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)))
        finite = self.dist.all(finite)  # every rank steps, or none does
        if finite or acc.scaler is not None:
            # Under fp16 the gradient scaler skips a non-finite step itself, and must see every step
            # (it lowers its scale and resets its unscale state), so its step always runs.
            self.optimizer.step()
            if self.critic is not None:
                self.critic_optimizer.step()
        if not finite:
            # A NaN/inf loss or gradient would poison the weights and Adam's moments: skip the step.
            log.warning("minibatch skipped: loss %s, grad norm %s", loss, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic is not None:
            self.critic_optimizer.zero_grad(set_to_none=True)
        return OptimizerStep(grad_norm, finite)


class _RowStates:
    """The kept states of a batch of ``n`` rows, filled a micro-batch at a time in any row order."""

    def __init__(self, n: int, keep: Callable[[torch.Tensor], torch.Tensor]):
        self.n, self.keep = n, keep
        self.states: Optional[torch.Tensor] = None  # (n, ...) once the first micro-batch is in

    def put(self, rows: torch.Tensor, states: torch.Tensor) -> None:
        """``keep(states)`` of the micro-batch (b, P+R, D) into rows ``rows`` (b,)."""
        kept = self.keep(states.detach())
        if self.states is None:
            self.states = kept.new_empty((self.n, *kept.shape[1:]))
        self.states[rows.to(self.states.device)] = kept
