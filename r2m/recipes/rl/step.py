"""One RL step (:func:`train_step`), as named phases over the run's parts (:class:`RLComponents`):

    1. rollout        K samples per prompt; pi_old's log-probs (and R2M's h), the reference's  (experience/rollout.py)
    2. rewards        the reward function on each sample, R2M's fusion of h included (Eq. 3-4)  (experience/rollout.py)
    3. advantages     the estimator of rl.algorithm over the group's rewards                    (experience/rollout.py)
       guard          a batch with NaN/inf anywhere is skipped by every rank
    4. policy update  k epochs of the clipped surrogate (Eq. 2); the generator gets the weights (updates/policy.py)
    5. R2M update     GREBT on the RM's fusion and head, with the last epoch's h (Eq. 5-7)     (updates/grebt.py)
    6. metrics        the step's statistics; the KL controller reads the step's sequence KL
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from r2m.errors import NumericError
from r2m.experience.rollout import Experience, experience_metrics, sequence_kl
from r2m.experience.sampling import chunk_seed
from r2m.recipes.rl.checkpoints import save_checkpoint
from r2m.recipes.rl.state import RLComponents
from r2m.recipes.rl.trl_aliases import with_trl_aliases
from r2m.runtime.distributed import Dist
from r2m.utils import device_clock

log = logging.getLogger("r2m")


def train_step(s: RLComponents, step: int) -> dict[str, float]:
    """Policy step ``step`` (1-based) of the run ``s``; R2M's round is t = step - 1. Returns the step's metrics."""
    cfg, t = s.cfg, step - 1
    texts, ids = local_prompts(s, cfg.rl.prompts_per_step)
    beta = s.kl_ctl.value
    t0 = device_clock()
    # 1. Rollout: K samples per prompt, pi_old's log-probs (and R2M's h) and the reference's.
    rollout = s.maker.rollout(texts, ids, t, chunk_seeds(cfg.rl.rollout_chunks, cfg.run.seed, s.dist, step))
    # 2. Rewards: r = r_φ(x, y, h) with R2M. init=matched first scales W_o on this batch's H_last and h, once.
    if s.r2m is not None and s.r2m.calibrates(rollout.query):
        rollout = rollout._replace(query=s.r2m.calibrate(rollout.query))
    rewards = s.maker.score(rollout)
    if s.grebt is not None and s.progress.r2m_before is None:
        s.progress.r2m_before = s.grebt.model.trainable_state()  # Table 3's "before"
    # 3. Advantages (over PPO's values; with rl.kl_mode=reward, of the KL-penalised reward).
    exp = s.maker.estimate(rollout, rewards, beta)
    bad = bad_experience(exp)
    if not s.dist.all(not bad):  # the guard: every rank skips the step, whichever rank saw NaN/inf
        return skip_step(s, step, bad or {"guard/other_rank": 1.0})
    # 4. Policy update; R2M keeps the last epoch's states as its refreshed h. Then the generator gets the weights.
    with s.timer("update"):
        stats = {"policy/lr": s.optimizer.param_groups[0]["lr"]}
        keep = s.grebt.keep_states if s.grebt is not None and exp.policy_hidden is not None else None
        update = s.updater.update(exp, beta, keep_states=keep)
        stats.update(update.stats)
        if s.lr_scheduler is not None:
            s.lr_scheduler.step()
        s.generator.sync_weights(s.models.unwrapped_policy())  # vLLM: push the new weights; hf: nothing
    # 5. R2M's GREBT update of the RM's fusion and head.
    if s.grebt is not None:
        with s.timer("rm_update"):
            stats.update(s.grebt.update(exp, update.states))
    time_step = device_clock() - t0
    # 6. Metrics; the KL controller reads the step's sequence-level KL.
    all_skipped = stats.get("guard/skipped_minibatches", 0) == cfg.rl.epochs * cfg.rl.minibatches
    s.progress.bad_steps = s.progress.bad_steps + 1 if all_skipped else 0
    metrics = step_metrics(s, step, exp, stats, beta, time_step)
    s.kl_ctl.update(sequence_kl(exp, s.dist), exp.batch_size * s.dist.num_processes)
    check_bad_steps(s, step)
    return with_trl_aliases(metrics)  # reward, reward_std, ... beside r2m's keys


def local_prompts(s: RLComponents, count: int) -> tuple[list[str], list[list[int]]]:
    """The step's global batch of prompts (the same on every rank), then this rank's contiguous share: a prompt's K
    samples are made on one rank, so group advantages and R2M's per-group loss stay local."""
    texts, ids = s.sampler.take(count)
    idx = s.dist.shard(list(range(len(texts))))
    return [texts[i] for i in idx], [ids[i] for i in idx]


def chunk_seeds(chunks: int, seed: int, dist: Dist, step: int) -> Optional[list[int]]:
    """rl.rollout_chunks: the seeds of this rank's chunks (global chunk indices, so any N agrees).

    With rollout_chunks=0 one process samples from its RNG stream; several processes, whose streams
    start equal (one run.seed), each get a seed of their own rank instead."""
    if not chunks:
        return [chunk_seed(seed, step, 10**6 + dist.rank)] if dist.enabled else None
    return [chunk_seed(seed, step, c) for c in dist.shard(range(chunks))]


def step_metrics(s: RLComponents, step: int, exp: Experience, stats: dict[str, float], beta: float,
                 time_step: float) -> dict[str, float]:
    """The step's row: rollout statistics of the global batch, the updates' statistics, the phases' times, the
    prompts seen, β, and the data counts (the prompt sets' at step 1, a stream's and the RM's cuts so far)."""
    timing = {f"time/{k}": v for k, v in s.timer.pop().items()}
    metrics = {**experience_metrics(exp, s.dist), **stats, **timing, "time/step": time_step,
               "prompts/seen": s.sampler.position, "kl/beta": beta}
    if exp.policy_hidden is not None:
        metrics["r2m/hidden_mb"] = exp.policy_hidden.numel() * exp.policy_hidden.element_size() / 2**20
    if step == 1:
        metrics.update(s.prompt_stats)
    metrics.update(s.sampler.counts())  # a prompt stream's cuts so far (a prompt set's are known at step 1)
    if s.reward_fn.reward_model is not None:  # RM inputs cut at reward.max_length since the last step
        metrics["data/rm_truncated"] = s.reward_fn.reward_model.pop_truncated()
    return metrics


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


def skip_step(s: RLComponents, step: int, bad: dict[str, float]) -> dict[str, float]:
    """A step whose experience holds NaN/inf: no update, its stats logged, and a count towards the stop."""
    s.progress.bad_steps += 1
    log.warning("step %d skipped: non-finite values in the experience: %s", step, bad)
    metrics = {**bad, "guard/skipped_step": 1.0, "guard/bad_steps": s.progress.bad_steps,
               "prompts/seen": s.sampler.position, "kl/beta": s.kl_ctl.value}
    s.timer.pop()
    check_bad_steps(s, step, metrics)
    return metrics


def check_bad_steps(s: RLComponents, step: int, metrics: Optional[dict] = None) -> None:
    """Stop with a checkpoint after ``run.max_bad_steps`` consecutive bad steps (``metrics``: the step's row, logged
    first when the step was skipped)."""
    if s.progress.bad_steps < s.cfg.run.max_bad_steps:
        return
    if metrics is not None:
        s.run.log(metrics, step)
    path = save_checkpoint(s.resumable, s.cfg, s.run, step)
    raise NumericError(f"{s.progress.bad_steps} consecutive steps with NaN/inf rewards, advantages, losses or "
                       f"gradients (run.max_bad_steps={s.cfg.run.max_bad_steps}) at step {step}; stopped with a "
                       f"checkpoint in {path}. See guard/* in {s.run.metrics_path}.")
