"""Pieces shared by the trainers: accelerator construction, batching, schedules, progress."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Optional, Sequence

import torch

from r2m.config.enums import LRSchedule
from r2m.config.root import Config
from r2m.errors import ConfigError
from r2m.fileio import atomic_dir
from r2m.runtime.checkpoint import (
    each_rank,
    guard_write,
    latest_checkpoint,
    prune,
    read_state,
    rng_state,
    set_rng_state,
    step_dir,
    tensor_bytes,
    write_state,
)
from r2m.runtime.distributed import Dist, fsdp_plugin, route_fsdp
from r2m.runtime.host import configure_host
from r2m.runtime.runlog import resolve_trackers
from r2m.runtime.safeio import load_safetensors as load_file

if TYPE_CHECKING:
    from r2m.runtime.hooks import Hooks
    from r2m.runtime.runlog import RunDir


def resolve_mixed_precision(cfg: Config) -> str:
    """The autocast mode accelerate gets: ``no``, ``bf16`` or ``fp16`` (or a launcher's other choice).

    ``run.mixed_precision=no`` defers to the launcher (``accelerate launch --mixed_precision``, i.e.
    ACCELERATE_MIXED_PRECISION, default no); bf16, fp16 and auto win over it. ``auto`` is bf16 on a CUDA
    device that supports it, fp16 on older CUDA, and no on the CPU. fp16 without CUDA is refused.
    """
    import os

    mp, launcher = cfg.run.mixed_precision, ""
    if mp == "no":
        mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        launcher = f" (run.mixed_precision=no defers to the launcher's ACCELERATE_MIXED_PRECISION={mp})"
    forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    cuda = cfg.run.device != "cpu" and torch.cuda.is_available() and not forced_cpu
    if mp == "auto":
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if mp == "fp16" and not cuda:
        raise ConfigError(f"run.mixed_precision: fp16 needs a CUDA device, and this run is on the CPU; use bf16 or "
                          f"no{launcher}")
    return mp


def make_accelerator(cfg: Config, project_dir: Optional[str] = None):
    """An ``accelerate.Accelerator`` honouring run.device, run.mixed_precision and run.log_with.

    Under ``accelerate launch`` the distributed setup comes from the launcher; on a plain
    ``python`` call this is a single process.
    """
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import InitProcessGroupKwargs

    configure_host(cfg.run)  # run.threads and run.malloc: every training job builds its accelerator first
    # "auto" without CUDA is CPU; saying so also lets a CPU launch with N processes run as MULTI_CPU (gloo).
    cpu = cfg.run.device == "cpu" or (cfg.run.device == "auto" and not torch.cuda.is_available())
    mixed_precision = resolve_mixed_precision(cfg)
    plugin = fsdp_plugin(cfg.dist.reduce_dtype, mixed_precision)
    kwargs = dict(
        cpu=cpu,
        mixed_precision=mixed_precision,
        fsdp_plugin=plugin,
        # The first Accelerator of a process starts its process group: with this timeout.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=cfg.dist.timeout_minutes))],
        # Trackers need a directory; internal stages (the world cache) log to metrics.jsonl only.
        # run.log_with as accelerate takes it; a tracker named but not installed is an error here, before a model loads.
        log_with=(resolve_trackers(cfg.run.log_with) or None) if project_dir else None,
        project_dir=project_dir,
    )
    try:
        acc = Accelerator(**kwargs)
    except ValueError as e:
        if "already been initialized" not in str(e):
            raise
        # accelerate keeps one process-wide state: a process that made an Accelerator with another precision
        # before (a test session, a notebook) starts that state over. The process group is kept.
        AcceleratorState._reset_state()
        acc = Accelerator(**kwargs)
    route_fsdp(acc, plugin)
    return acc


def num_steps(n_items: int, batch_size: int, epochs: float, max_steps: int) -> int:
    steps = max(1, math.ceil(n_items * epochs / batch_size))
    return min(steps, max_steps) if max_steps else steps


def batch_indices(n_items: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of shuffled indices, reshuffling at each pass over the data."""
    gen = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n_items, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n_items:
            perm, pos = torch.randperm(n_items, generator=gen), 0
        yield perm[pos: pos + batch_size]
        pos += batch_size


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int, fill: Optional[int] = None) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id if fill is None else fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------------------------------
# The supervised loop shared by SFT and RM training, with atomic checkpoints and resume
# ---------------------------------------------------------------------------------------------


class LossOutput(NamedTuple):
    loss: torch.Tensor
    """Scalar loss of the batch."""
    stats: dict
    """Extra per-batch metrics (floats), averaged over the logging window."""


class LoopResult(NamedTuple):
    steps: int
    """The last optimiser step taken."""
    final_loss: float
    stopped_early: bool = False
    """A callback (``hooks``) asked to stop before the planned steps."""


def _save_loop_checkpoint(directory: Path, model, optimizer, scheduler, step: int, fingerprint: dict) -> None:
    from safetensors.torch import save_file

    with atomic_dir(directory) as tmp:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        write_state(tmp, {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                          "rng": rng_state()}, step, fingerprint)


def _restore_loop_checkpoint(directory: Path, model, optimizer, scheduler, fingerprint: dict) -> int:

    state = read_state(directory, fingerprint)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def _resume_start(model, optimizer, scheduler, accelerator, prefix: str, fingerprint: dict,
                  checkpoint_dir: Optional[Path]) -> int:
    """The step to continue after: that of the latest checkpoint under ``checkpoint_dir`` (restored), else 0."""
    if checkpoint_dir is None or (latest := latest_checkpoint(checkpoint_dir)) is None:
        return 0
    start = _restore_loop_checkpoint(latest, accelerator.unwrap_model(model), optimizer, scheduler, fingerprint)
    logging.getLogger("r2m").info("%s: resumed from %s at step %d", prefix, latest, start)
    return start


def supervised_loop(model, optimizer, scheduler, accelerator, *, n_items: int, batch_size: int, steps: int,
                    seed: int, loss_fn: Callable[[torch.Tensor], LossOutput], prefix: str, log_every: int,
                    max_grad_norm: float, run: Optional["RunDir"], fingerprint: dict, keep_checkpoints: int = 3,
                    checkpoint_dir: Optional[Path] = None, save_every: int = 0, resume: bool = False,
                    show_progress: bool = True, hooks: Optional["Hooks"] = None) -> LoopResult:
    """Shuffled batches -> loss_fn -> clipped AdamW step, logging every ``log_every`` steps.

    With ``checkpoint_dir`` and ``save_every``, model, optimiser, scheduler and RNG states are saved
    atomically every ``save_every`` steps; with ``resume`` the loop continues from the latest one
    (the batch order is a pure function of the seed, so resuming replays it exactly). ``fingerprint``
    names what determines this training; a checkpoint written under another one is refused. ``hooks``
    (the object API's callbacks) get ``on_step_end(step, metrics)`` after each optimiser step and
    ``on_save(step, path)`` after each checkpoint; one returning True ends the loop after that step (logged,
    and checkpointed when there is a ``checkpoint_dir``).
    """
    dist = Dist(accelerator)
    if batch_size % dist.num_processes:
        raise ConfigError(f"{prefix}.batch_size: expected a multiple of the {dist.num_processes} processes (each "
                          f"takes an equal share of every batch), got {batch_size}")
    start = _resume_start(model, optimizer, scheduler, accelerator, prefix, fingerprint,
                          checkpoint_dir if resume else None)
    model.train()
    window: list[float] = []
    extras: dict[str, float] = {}
    final, stop = float("nan"), False
    bar = progress(steps, prefix, show_progress)
    bar.update(start)
    for step, idx in enumerate(batch_indices(n_items, batch_size, steps, seed), start=1):
        if step <= start:
            continue  # replayed batch order: skip what the checkpoint already covers
        if len(idx) % dist.num_processes:
            raise ConfigError(f"{prefix}.batch_size: the data has {n_items} items, fewer than a batch of {batch_size}; "
                              f"the short batch of {len(idx)} cannot be split over {dist.num_processes} processes")
        out = loss_fn(dist.shard(idx))  # this process's share of the global batch
        accelerator.backward(out.loss)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(out.loss.item())
        for k, v in out.stats.items():
            extras[k] = extras.get(k, 0.0) + v
        bar.update(1)
        if hooks is not None:
            stop = _step_hooks(hooks, dist, prefix, step, window[-1], grad_norm, scheduler, out.stats) and step < steps
        if step % log_every == 0 or step == steps or stop:
            final = _log_window(run, dist, prefix, step, window, extras, grad_norm, scheduler, batch_size)
            bar.set_postfix(loss=f"{final:.3f}")
            window, extras = [], {}
        if checkpoint_dir is not None and ((save_every and step % save_every == 0) or stop) and step < steps:
            _checkpoint(accelerator, dist, checkpoint_dir, model, optimizer, scheduler, step, fingerprint,
                        keep_checkpoints, hooks)
        if stop:
            break
    bar.close()
    return LoopResult(step if stop else steps, final, stop)


def _step_hooks(hooks: "Hooks", dist: Dist, prefix: str, step: int, loss: float, grad_norm, scheduler,
                stats: dict) -> bool:
    """``on_step_end`` with this process's step metrics; True when a callback (on any rank) asked to stop."""
    norm = float("nan") if grad_norm is None else float(grad_norm)
    hooks("on_step_end", step, {f"{prefix}/loss": loss, f"{prefix}/grad_norm": norm,
                                f"{prefix}/lr": scheduler.get_last_lr()[0], **stats})
    return not dist.all(not hooks.stop_requested)  # every rank stops after the same step


def _log_window(run: Optional["RunDir"], dist: Dist, prefix: str, step: int, window: list[float], extras: dict,
                grad_norm, scheduler, batch_size: int) -> float:
    """Log the window's mean loss and stats at ``step``; returns the mean loss."""
    # DeepSpeed clips inside its step and may report no norm.
    norm = float("nan") if grad_norm is None else float(grad_norm)
    means = dist.mean_stats({"loss": sum(window) / len(window), **{k: v / len(window) for k, v in extras.items()}})
    final = means.pop("loss")
    if run is not None:
        run.log({f"{prefix}/loss": final, f"{prefix}/grad_norm": norm,
                 f"{prefix}/rows_per_process": batch_size // dist.num_processes,
                 f"{prefix}/lr": scheduler.get_last_lr()[0], **means}, step)
    return final


def _checkpoint(accelerator, dist: Dist, checkpoint_dir: Path, model, optimizer, scheduler, step: int,
                fingerprint: dict, keep_checkpoints: int, hooks: Optional["Hooks"]) -> None:
    """Rank 0 writes the checkpoint at ``step`` (the replicas are identical: one writer); the ranks then agree on
    whether it was written, so a failed write raises on every rank at once instead of leaving the others waiting."""
    path = step_dir(checkpoint_dir, step)

    def write() -> None:
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            with guard_write(path, tensor_bytes(unwrapped.state_dict()) + tensor_bytes(optimizer.state_dict())):
                _save_loop_checkpoint(path, unwrapped, optimizer, scheduler, step, fingerprint)
            prune(checkpoint_dir, keep_checkpoints)

    each_rank(dist, path, write)  # rank 0's error, or on the others a CheckpointWriteError saying so
    accelerator.wait_for_everyone()
    if hooks is not None:
        hooks("on_save", step, str(path))


def make_lr_scheduler(optimizer, schedule: LRSchedule, warmup_steps: int, total_steps: int):
    """The policy's learning-rate schedule over RL steps (``scheduler.step()`` once per RL step), from
    transformers' schedulers; None for a constant rate without warm-up (the learning rate is never touched)."""
    if schedule == LRSchedule.CONSTANT and warmup_steps == 0:
        return None
    from transformers import get_scheduler

    name = {LRSchedule.CONSTANT: "constant_with_warmup", LRSchedule.LINEAR: "linear",
            LRSchedule.COSINE: "cosine"}[schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
