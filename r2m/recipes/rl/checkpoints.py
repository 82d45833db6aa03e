"""The RL run's checkpoints: the training state, atomic saves (older ones pruned), and the restore on resume. Each
function takes the parts a checkpoint holds (:class:`r2m.recipes.rl.state.Resumable`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from r2m.config.root import Config
from r2m.fileio import atomic_dir
from r2m.models.critic import load_critic, save_critic
from r2m.models.loading import save_model
from r2m.recipes.rl.state import Resumable
from r2m.runtime.checkpoint import fingerprint, free_fields, prune, rng_state, set_rng_state, step_dir, write_state
from r2m.runtime.distributed import sharded_state_dict
from r2m.runtime.runlog import RunDir
from r2m.runtime.safeio import load_safetensors as load_file

log = logging.getLogger("r2m")


def training_state(parts: Resumable, step: int) -> dict:
    """What ``state.pt`` holds: the step, the prompt order, the RNG states, the optimisers', the KL controller's,
    the reward normaliser's and R2M's states, and the counters."""
    state = {"step": step, "sampler_position": parts.sampler.position, "sampler": parts.sampler.state_dict(),
             "rng": rng_state(), "optimizer": parts.optimizer.state_dict(), "kl_ctl": parts.kl_ctl.state_dict(),
             "bad_steps": parts.progress.bad_steps, "omega_step": step}
    if parts.moments is not None:
        state["moments"] = parts.moments.state_dict()
    if parts.critic_optimizer is not None:
        state["critic_optimizer"] = parts.critic_optimizer.state_dict()
    if parts.lr_scheduler is not None:
        state["lr_scheduler"] = parts.lr_scheduler.state_dict()
    if parts.grebt is not None:
        state["r2m_optimizer"] = parts.grebt.optimizer.state_dict()
        state["r2m_initial"] = parts.progress.r2m_before
    return state


def save_checkpoint(parts: Resumable, cfg: Config, run: RunDir, step: int) -> Path:
    """Everything needed to continue at step + 1, written atomically into ``run``'s checkpoints; older ones pruned."""
    models = parts.models
    acc = models.acc
    final = step_dir(run.checkpoints, step)
    policy_state = sharded_state_dict(acc, models.policy)  # every rank takes part in gathering a sharded policy
    if acc.is_main_process:
        with atomic_dir(final) as tmp:
            save_model(models.unwrapped_policy(), models.tokenizer, tmp / "policy", policy_state)
            if parts.grebt is not None:
                parts.grebt.model.save(tmp / "r2m", base_rm=str(parts.rm_path))
            if models.critic is not None:
                save_critic(acc.unwrap_model(models.critic), tmp / "critic")
            write_state(tmp, training_state(parts, step), step, fingerprint(cfg), free_fields(cfg))
        prune(run.checkpoints, cfg.run.keep_checkpoints)
    acc.wait_for_everyone()
    parts.progress.saved_step = step
    return final


def checkpoint_last_step(parts: Resumable, cfg: Config, run: RunDir, step: int) -> Optional[Path]:
    """The last step's checkpoint, unless this run saved (or resumed from) it already: a run extended later
    (rl.steps raised, run.resume=auto) resumes at this step, not at the last rl.save_every multiple."""
    if step <= 0 or step == parts.progress.saved_step:
        return None
    return save_checkpoint(parts, cfg, run, step)


def restore(parts: Resumable, directory: Path, state: dict) -> None:
    """The parts as the checkpoint in ``directory`` (whose ``state.pt`` is ``state``) left them."""
    models = parts.models
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.lr_scheduler is not None:
        parts.lr_scheduler.load_state_dict(state["lr_scheduler"])
    parts.kl_ctl.load_state_dict(state["kl_ctl"])
    parts.sampler.load_state_dict(state.get("sampler") or {"position": state["sampler_position"]})
    parts.progress.bad_steps = state["bad_steps"]
    if "moments" in state:
        parts.moments.load_state_dict(state["moments"])
    if models.critic is not None:
        models.acc.unwrap_model(models.critic).load_state_dict(load_critic(directory / "critic").state_dict())
        parts.critic_optimizer.load_state_dict(state["critic_optimizer"])
    if parts.grebt is not None:
        parts.grebt.model.load_trainable_state(load_file(str(directory / "r2m" / "r2m.safetensors")))
        parts.grebt.optimizer.load_state_dict(state["r2m_optimizer"])
        parts.progress.r2m_before = state["r2m_initial"]
    parts.progress.start_step = parts.progress.saved_step = state["step"]
    set_rng_state(state["rng"])
    log.info("resumed from %s at step %d", directory, parts.progress.start_step)
