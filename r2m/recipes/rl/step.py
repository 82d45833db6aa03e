"""One RL step: make -> guard -> update -> sync -> RM update -> metrics (:meth:`StepMixin.step`), and the numeric
guard that skips a step whose experience holds NaN/inf."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from r2m.errors import NumericError
from r2m.experience.rollout import Experience, experience_metrics
from r2m.experience.sampling import chunk_seed
from r2m.recipes.rl.trl_aliases import with_trl_aliases
from r2m.utils import device_clock

log = logging.getLogger("r2m")



def tensor_stats(name: str, x: torch.Tensor) -> dict[str, float]:
    """NaN/inf counts and the range of the finite values: what the numeric guard logs."""
    finite = x[torch.isfinite(x)]
    return {f"guard/{name}_nan": torch.isnan(x).sum().item(), f"guard/{name}_inf": torch.isinf(x).sum().item(),
            f"guard/{name}_min": finite.min().item() if finite.numel() else float("nan"),
            f"guard/{name}_max": finite.max().item() if finite.numel() else float("nan")}


def bad_experience(exp: Experience) -> dict[str, float]:
    """Stats of every non-finite tensor the update would consume (empty when all are finite)."""
    out: dict[str, float] = {}
    for name in ("scores", "advantages", "old_logprobs", "ref_logprobs", "values"):
        x = getattr(exp, name)
        if x is not None and not torch.isfinite(x).all():
            out.update(tensor_stats(name, x))
    return out


class StepMixin:
    """The step of :class:`r2m.recipes.rl.run.RLRun` (its attributes are set up there)."""

    def _chunk_seeds(self, step: int) -> Optional[list[int]]:
        """rl.rollout_chunks: the seeds of this rank's chunks (global chunk indices, so any N agrees).

        With rollout_chunks=0 one process samples from its RNG stream; several processes, whose streams
        start equal (one run.seed), each get a seed of their own rank instead."""
        chunks = self.cfg.rl.rollout_chunks
        if not chunks:
            return [chunk_seed(self.cfg.run.seed, step, 10**6 + self.dist.rank)] if self.dist.enabled else None
        return [chunk_seed(self.cfg.run.seed, step, c) for c in self.dist.shard(range(chunks))]

    def step(self, step: int) -> dict[str, float]:
        """Policy step ``step`` (1-based); R2M's round is t = step - 1."""
        cfg = self.cfg
        # The global batch (the same on every rank), then this rank's contiguous share: a prompt's K
        # samples are made on one rank, so group advantages and R2M's per-group loss stay local.
        texts, ids = self.sampler.take(cfg.rl.prompts_per_step)
        idx = self.dist.shard(list(range(len(texts))))
        t0 = device_clock()
        beta = self.kl_ctl.value
        exp = self.maker.make([texts[i] for i in idx], [ids[i] for i in idx], step=step - 1,
                              beta=beta, seeds=self._chunk_seeds(step))
        t1 = device_clock()
        if self.rm_updater is not None and self.initial_rm_state is None:
            self.initial_rm_state = self.rm_updater.model.trainable_state()
        bad = bad_experience(exp)
        if not self.dist.all(not bad):
            return self._skip(step, bad or {"guard/other_rank": 1.0}, exp)
        update = self.updater.update(exp, beta)
        stats = {"policy/lr": self.optimizer.param_groups[0]["lr"], **update.stats}
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.generator.sync_weights(self.acc.unwrap_model(self.policy))  # vLLM: push the new weights; hf: nothing
        t2 = device_clock()
        if self.rm_updater is not None:
            stats.update(self.rm_updater.update(exp, update.policy_hidden))
        t3 = device_clock()
        self.bad_steps = self.bad_steps + 1 if stats.get("guard/skipped_minibatches", 0) == cfg.rl.epochs * \
            cfg.rl.minibatches else 0
        timing = {f"time/{k}": v for k, v in self.maker.timer.pop().items()}
        metrics = {**experience_metrics(exp, self.dist), **stats, **timing, "time/update": t2 - t1,
                   "time/rm_update": t3 - t2, "time/step": t3 - t0, "prompts/seen": self.sampler.position,
                   "kl/beta": beta}
        self.kl_ctl.update(metrics["kl/seq_sum"], exp.batch_size * self.dist.world)
        if exp.policy_hidden is not None:
            metrics["r2m/hidden_mb"] = exp.policy_hidden.numel() * exp.policy_hidden.element_size() / 2**20
        if step == 1:
            metrics.update(self.prompt_stats)
        metrics.update(self.sampler.counts())  # a prompt stream's cuts so far (a prompt set's are known at step 1)
        if self.reward_fn.reward_model is not None:  # RM inputs cut at reward.max_length since the last step
            metrics["data/rm_truncated"] = self.reward_fn.reward_model.pop_truncated()
        self._check_bad_steps(step)
        metrics = with_trl_aliases(metrics)  # reward, reward_std, ... beside r2m's keys
        return metrics

    def _skip(self, step: int, bad: dict[str, float], exp: Experience) -> dict[str, float]:
        """A step whose experience holds NaN/inf: no update, its stats logged, and a count towards the stop."""
        self.bad_steps += 1
        log.warning("step %d skipped: non-finite values in the experience: %s", step, bad)
        metrics = {**bad, "guard/skipped_step": 1.0, "guard/bad_steps": self.bad_steps,
                   "prompts/seen": self.sampler.position, "kl/beta": self.kl_ctl.value}
        self.maker.timer.pop()
        self._check_bad_steps(step, metrics)
        return metrics

    def _check_bad_steps(self, step: int, metrics: Optional[dict] = None) -> None:
        if self.bad_steps < self.cfg.run.max_bad_steps:
            return
        if metrics is not None:
            self.run.log(metrics, step)
        path = self.save_checkpoint(step)
        raise NumericError(f"{self.bad_steps} consecutive steps with NaN/inf rewards, advantages, losses or gradients "
                           f"(run.max_bad_steps={self.cfg.run.max_bad_steps}) at step {step}; stopped with a "
                           "checkpoint "
                           f"in {path}. See guard/* in {self.run.metrics_path}.")
