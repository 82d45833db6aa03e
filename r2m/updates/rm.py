"""Reward-model training with the Bradley-Terry loss, with held-out pairwise accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Sequence

import torch

from r2m.config.root import Config
from r2m.config.models import LoRAConfig
from r2m.config.training import RMConfig
from r2m.runtime.distributed import configure_deepspeed
from r2m.runtime.precision import fp32_master_weights
from r2m.eval.rm_accuracy import RMAccuracy, pairwise_accuracy
from r2m.core.losses import bradley_terry_loss
from r2m.runtime.runlog import RunDir
from r2m.updates.supervised import LoopResult, LossOutput, num_steps, supervised_loop
from r2m.models.lora import apply_lora, enable_gradient_checkpointing
from r2m.models.reward import RewardModel
from r2m.runtime.checkpoint import fingerprint

if TYPE_CHECKING:
    from r2m.runtime.hooks import Hooks


@dataclass(frozen=True)
class RMResult:
    steps: int
    """Optimiser steps taken."""
    final_loss: float
    """Mean BT loss over the last logging window."""
    eval: Optional[RMAccuracy]
    """Held-out accuracy after training (None without held-out pairs)."""
    stopped_early: bool = False
    """A callback asked to stop before the planned steps (the model trained so far is what is saved)."""


class TrainableRM(NamedTuple):
    rm: torch.nn.Module
    """The :class:`r2m.models.reward.RewardModel` being trained."""
    peft: Optional[torch.nn.Module]
    """The ``peft`` wrapper when LoRA is on (merged into the weights before saving)."""


def make_trainable_rm(model, tokenizer, lora: Optional[LoRAConfig] = None, gradient_checkpointing: bool = False,
                      base_path: Optional[str] = None) -> TrainableRM:
    """A RewardModel over ``model`` (a sequence classifier), through LoRA adapters when ``lora.enabled`` (the
    score head then trains fully), with gradient checkpointing when asked. LoRA's init draws from torch's RNG."""

    peft = apply_lora(model, lora, "seq_cls", base_path=base_path) if lora is not None and lora.enabled else None
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    # The RewardModel wraps the injected HF model (backbone + head), not the PEFT shell.
    return TrainableRM(RewardModel(peft.base_model.model if peft is not None else model, tokenizer), peft)


def merged_rm_model(trainable: TrainableRM):
    """The trained RM as a plain ``AutoModelForSequenceClassification`` (LoRA merged in, in place)."""
    return trainable.peft.merge_and_unload() if trainable.peft is not None else trainable.rm.model


def _pad_to(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return x if x.shape[1] == width else torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def pair_batch(chosen: dict, rejected: dict, idx: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen then rejected rows of ``idx`` in one right-padded batch, (2b, S), all-pad columns dropped."""
    width = max(chosen["input_ids"].shape[1], rejected["input_ids"].shape[1])
    ids = torch.cat([_pad_to(chosen["input_ids"][idx], width, pad_id), _pad_to(rejected["input_ids"][idx], width, pad_id)])
    mask = torch.cat([_pad_to(chosen["attention_mask"][idx], width, 0),
                      _pad_to(rejected["attention_mask"][idx], width, 0)])
    w = int(mask.sum(1).max())
    return {"input_ids": ids[:, :w], "attention_mask": mask[:, :w]}


PairLossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fit_pairs(rm, prompts: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], rmc: RMConfig,
              accelerator, run: Optional[RunDir], seed: int, *, pair_loss: PairLossFn = bradley_terry_loss,
              linear_decay: bool = False, keep_checkpoints: int = 3, checkpoint_dir: Optional[Path] = None,
              resume: bool = False, show_progress: bool = True, hooks: Optional["Hooks"] = None) -> LoopResult:
    """Fit ``rm`` on (prompt, chosen, rejected) with ``pair_loss(r_chosen, r_rejected)`` (BT by default).

    The learning rate warms up then decays, cosine by default or linear (SER App. C.3). ``hooks``: the
    callbacks of :func:`r2m.updates.supervised.supervised_loop`.
    """
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    enc_c, enc_r = rm.tokenize(prompts, chosen), rm.tokenize(prompts, rejected)
    steps = num_steps(len(prompts), rmc.batch_size, rmc.epochs, rmc.max_steps)
    fp32_master_weights(rm, "reward model", accelerator)
    opt = torch.optim.AdamW([p for p in rm.parameters() if p.requires_grad], lr=rmc.lr, weight_decay=rmc.weight_decay)
    schedule = get_linear_schedule_with_warmup if linear_decay else get_cosine_schedule_with_warmup
    sched = schedule(opt, int(rmc.warmup_ratio * steps), steps)
    pad_id = rm.tokenizer.pad_token_id
    configure_deepspeed(accelerator, rmc.batch_size // accelerator.num_processes, rmc.max_grad_norm)
    model, opt, sched = accelerator.prepare(rm, opt, sched)

    def loss_fn(idx: torch.Tensor) -> LossOutput:
        b = len(idx)
        enc = pair_batch(enc_c, enc_r, idx, pad_id)
        scores = model(enc["input_ids"].to(accelerator.device), enc["attention_mask"].to(accelerator.device))  # (2b,)
        acc = (scores[:b] > scores[b:]).float().mean().item()
        return LossOutput(pair_loss(scores[:b], scores[b:]), {"rm/train_acc": acc})

    result = supervised_loop(model, opt, sched, accelerator, n_items=len(prompts), batch_size=rmc.batch_size,
                             steps=steps, seed=seed, loss_fn=loss_fn, prefix="rm", log_every=rmc.log_every,
                             max_grad_norm=rmc.max_grad_norm, run=run,
                             fingerprint={**fingerprint(rmc, "rm."), "seed": seed, "rows": len(prompts)},
                             keep_checkpoints=keep_checkpoints, checkpoint_dir=checkpoint_dir,
                             save_every=rmc.save_every, resume=resume, show_progress=show_progress, hooks=hooks)
    model.eval()
    return result


def train_reward_model(rm, rows: Sequence[dict], eval_rows: Optional[Sequence[dict]], cfg: Config, accelerator,
                       run: Optional[RunDir], seed: int, checkpoint_dir: Optional[Path] = None,
                       resume: bool = False, hooks: Optional["Hooks"] = None) -> RMResult:
    """Train ``rm`` (an :class:`r2m.models.reward.RewardModel`) with BT on (prompt, chosen, rejected) rows.

    ``hooks``: ``on_step_end`` / ``on_save`` of each step and checkpoint (``fit_pairs``), then ``on_evaluate``
    with the held-out accuracy; one returning True ends training after that step."""
    result = fit_pairs(rm, [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows],
                       cfg.rm, accelerator, run, seed, keep_checkpoints=cfg.run.keep_checkpoints,
                       checkpoint_dir=checkpoint_dir, resume=resume, show_progress=cfg.run.progress, hooks=hooks)
    accuracy = pairwise_accuracy(accelerator.unwrap_model(rm), eval_rows) if eval_rows else None
    if accuracy is not None:
        metrics = {"rm/eval_acc": accuracy.accuracy, "rm/eval_gold_acc": accuracy.gold_accuracy}
        if run is not None:
            run.amend_last(metrics)
        if hooks is not None:
            hooks("on_evaluate", result.steps, metrics)
    return RMResult(steps=result.steps, final_loss=result.final_loss, eval=accuracy, stopped_early=result.stopped_early)
