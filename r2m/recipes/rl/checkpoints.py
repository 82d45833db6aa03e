"""The RL run's checkpoints: the training state, atomic saves (older ones pruned), and the restore on resume. Each
function takes the parts a checkpoint holds (:class:`r2m.recipes.rl.state.Resumable`).

Under FSDP and DeepSpeed the policy (and PPO's critic) with their optimisers are saved sharded, each rank its
own part (:mod:`r2m.runtime.sharded`); R2M's fusion and head, trained alike on every rank, are written by rank 0;
with several processes every rank's RNG states are kept. ``state.pt`` names the backend it was written under, and a
resume under another is refused (:func:`read_resume_state`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from r2m.config.root import Config
from r2m.models.critic import load_critic, save_critic
from r2m.models.loading import save_model
from r2m.recipes.rl.state import Resumable
from r2m.runtime.checkpoint import (
    each_rank,
    fingerprint,
    free_fields,
    guard_write,
    load_state_file,
    prune,
    rank_rng_file,
    read_state,
    rng_state,
    set_rng_state,
    shared_atomic_dir,
    step_dir,
    tensor_bytes,
    write_state,
)
from r2m.runtime.distributed import Dist
from r2m.runtime.runlog import RunDir
from r2m.runtime.safeio import load_safetensors as load_file
from r2m.runtime.sharded import (
    REPLICATED,
    backend_name,
    check_resume_backend,
    checkpoint_backend,
    load_sharded,
    save_sharded,
)

log = logging.getLogger("r2m")


def training_state(parts: Resumable, step: int, backend: str = REPLICATED, num_processes: int = 1) -> dict:
    """What ``state.pt`` holds: the step, the prompt order, the RNG states, the optimisers', the KL controller's,
    the reward normaliser's and R2M's states, the counters, the evaluation that passed ``rl.stop_at_kl``, and the
    ``backend`` (:func:`r2m.runtime.sharded.backend_name`) and ``num_processes`` it was written under. Under a
    sharded backend the policy's and critic's optimisers are in the sharded checkpoint instead."""
    sharded = backend != REPLICATED
    state = {"step": step, "sampler_position": parts.sampler.position, "sampler": parts.sampler.state_dict(),
             "rng": rng_state(), "kl_ctl": parts.kl_ctl.state_dict(), "bad_steps": parts.progress.bad_steps,
             "omega_step": step, "kl_stop": parts.progress.kl_stop, "backend": backend,
             "num_processes": num_processes}
    if not sharded:
        state["optimizer"] = parts.optimizer.state_dict()
    if parts.moments is not None:
        state["moments"] = parts.moments.state_dict()
    if parts.critic_optimizer is not None and not sharded:
        state["critic_optimizer"] = parts.critic_optimizer.state_dict()
    if parts.lr_scheduler is not None:
        state["lr_scheduler"] = parts.lr_scheduler.state_dict()
    if parts.grebt is not None:
        state["r2m_optimizer"] = parts.grebt.optimizer.state_dict()
        state["r2m_initial"] = parts.progress.r2m_before
    return state


def _trained(parts: Resumable) -> dict:
    """The prepared models that train, each with its optimiser."""
    pairs = {"policy": (parts.models.policy, parts.optimizer)}
    if parts.models.critic is not None:
        pairs["critic"] = (parts.models.critic, parts.critic_optimizer)
    return pairs


def _bytes_to_write(parts: Resumable) -> int:
    """About how many bytes this rank writes into a checkpoint: its (share of the) trained weights and optimiser
    states, and R2M's."""
    total = sum(tensor_bytes(list(m.parameters())) + tensor_bytes(opt.state_dict())
                for m, opt in _trained(parts).values())
    if parts.grebt is not None:
        total += tensor_bytes(list(parts.grebt.model.parameters())) + tensor_bytes(parts.grebt.optimizer.state_dict())
    return total


def save_checkpoint(parts: Resumable, cfg: Config, run: RunDir, step: int) -> Path:
    """Everything needed to continue at step + 1, written atomically into ``run``'s checkpoints; older ones pruned.
    Every rank calls it. A failed write raises :class:`r2m.errors.CheckpointWriteError`, leaving the previous
    checkpoints as they were."""
    models = parts.models
    acc = models.acc
    dist, backend = Dist(acc), backend_name(acc)
    sharded = backend != REPLICATED
    final = step_dir(run.checkpoints, step)
    with guard_write(final, _bytes_to_write(parts)), shared_atomic_dir(final, dist) as tmp:
        if sharded:
            save_sharded(acc, tmp, _trained(parts))  # each rank its shard; no rank gathers the weights
        if dist.enabled:
            each_rank(dist, final, lambda: _save_rank_rng(tmp, dist.rank))
        if acc.is_main_process:
            if not sharded:  # the replicas are identical: one writer
                save_model(models.unwrapped_policy(), models.tokenizer, tmp / "policy")
                if models.critic is not None:
                    save_critic(acc.unwrap_model(models.critic), tmp / "critic")
            if parts.grebt is not None:
                parts.grebt.model.save(tmp / "r2m", base_rm=str(parts.rm_path))
            state = training_state(parts, step, backend, dist.num_processes)
            write_state(tmp, state, step, fingerprint(cfg), free_fields(cfg))
    if acc.is_main_process:
        prune(run.checkpoints, cfg.run.keep_checkpoints)
    acc.wait_for_everyone()
    parts.progress.saved_step = step
    return final


def _save_rank_rng(directory: Path, rank: int) -> None:
    """This rank's RNG states into the shared checkpoint ``directory``. A rank on a node that does not share rank 0's
    file system (possible under DDP, whose weights rank 0 alone writes) skips it, and on resume takes rank 0's."""
    import torch

    if not directory.is_dir():
        log.warning("rank %d does not see the checkpoint directory %s (no shared file system): its RNG states are not "
                    "saved, and a resume gives it rank 0's", rank, directory)
        return
    rank_rng_file(directory, rank).parent.mkdir(exist_ok=True)
    torch.save({"rng": rng_state()}, rank_rng_file(directory, rank))


def checkpoint_last_step(parts: Resumable, cfg: Config, run: RunDir, step: int) -> Optional[Path]:
    """The last step's checkpoint, unless this run saved (or resumed from) it already: a run extended later
    (rl.steps raised, run.resume=auto) resumes at this step, not at the last rl.save_every multiple."""
    if step <= 0 or step == parts.progress.saved_step:
        return None
    return save_checkpoint(parts, cfg, run, step)


def read_resume_state(directory: Path, cfg: Config, acc) -> dict:
    """``state.pt`` of the checkpoint in ``directory``, refused when it was written under another config
    (:func:`r2m.runtime.checkpoint.read_state`; a changed rl.steps, *_every, ... is logged) or under a backend whose
    state this run cannot put back (:func:`r2m.runtime.sharded.check_resume_backend`)."""
    state = read_state(directory, fingerprint(cfg), free_fields(cfg))
    check_resume_backend(directory, state, backend_name(acc), Dist(acc).num_processes)
    return state


def holds_policy(directory: Path, state: dict) -> bool:
    """True when the checkpoint holds the policy's whole weights (policy/); a sharded one holds its shards."""
    return checkpoint_backend(directory, state) == REPLICATED


def restore(parts: Resumable, directory: Path, state: dict) -> None:
    """The parts as the checkpoint in ``directory`` (whose ``state.pt`` is ``state``) left them."""
    models = parts.models
    sharded = not holds_policy(directory, state)
    if sharded:
        load_sharded(models.acc, directory, _trained(parts))
    else:
        parts.optimizer.load_state_dict(state["optimizer"])
    if parts.lr_scheduler is not None:
        parts.lr_scheduler.load_state_dict(state["lr_scheduler"])
    parts.kl_ctl.load_state_dict(state["kl_ctl"])
    parts.sampler.load_state_dict(state.get("sampler") or {"position": state["sampler_position"]})
    parts.progress.bad_steps = state["bad_steps"]
    parts.progress.kl_stop = state.get("kl_stop")
    if "moments" in state:
        parts.moments.load_state_dict(state["moments"])
    if models.critic is not None and not sharded:
        models.acc.unwrap_model(models.critic).load_state_dict(load_critic(directory / "critic").state_dict())
        parts.critic_optimizer.load_state_dict(state["critic_optimizer"])
    if parts.grebt is not None:
        parts.grebt.model.load_trainable_state(load_file(str(directory / "r2m" / "r2m.safetensors")))
        parts.grebt.optimizer.load_state_dict(state["r2m_optimizer"])
        parts.progress.r2m_before = state["r2m_initial"]
    parts.progress.start_step = parts.progress.saved_step = state["step"]
    restore_rank_rng(directory, state, Dist(models.acc).rank)
    log.info("resumed from %s at step %d", directory, parts.progress.start_step)


def restore_rank_rng(directory: Path, state: dict, rank: int) -> None:
    """This rank's RNG states from the checkpoint in ``directory``. A checkpoint of one process has rank 0's alone
    (``state["rng"]``); a rank whose own file is missing (its node did not share rank 0's file system) takes rank 0's,
    with a warning: its sampling then repeats rank 0's."""
    own = rank_rng_file(directory, rank)
    if own.exists():
        set_rng_state(load_state_file(own)["rng"])
        return
    if rank != 0:
        log.warning("rank %d: the checkpoint %s holds no RNG state of this rank (%s is missing); it takes rank 0's, "
                    "so its sampling stream from here on equals rank 0's", rank, directory, own)
    set_rng_state(state["rng"])
