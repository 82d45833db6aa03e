"""Supervised fine-tuning: next-token loss on the response tokens only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from r2m.config.root import Config
from r2m.runtime.distributed import configure_deepspeed
from r2m.runtime.precision import fp32_master_weights
from r2m.runtime.runlog import RunDir
from r2m.updates.supervised import LoopResult, LossOutput, num_steps, right_pad, supervised_loop
from r2m.runtime.checkpoint import fingerprint

IGNORE = -100


def tokenize_sft(tokenizer, rows: Sequence[dict], max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; labels are IGNORE on the prompt so only the response is learned."""
    p_ids = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    r_ids = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    out = []
    for p, r in zip(p_ids, r_ids):
        ids = (p + r)[:max_length]
        labels = ([IGNORE] * len(p) + r)[:max_length]
        out.append((ids, labels))
    return out


def sft_length(cfg: Config, model) -> int:
    """sft.max_length, capped by the model's positions (a longer sequence could not be run at all)."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return min(cfg.sft.max_length, limit) if limit else cfg.sft.max_length


def count_truncated(tokenizer, rows: Sequence[dict], max_length: int) -> int:
    """Rows whose prompt + response is longer than ``max_length`` tokens (cut by tokenize_sft)."""
    p_ids = tokenizer([r["prompt"] for r in rows], add_special_tokens=True)["input_ids"]
    r_ids = tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]
    return sum(len(p) + len(r) > max_length for p, r in zip(p_ids, r_ids))


def train_sft(model, tokenizer, rows: Sequence[dict], cfg: Config, accelerator, run: Optional[RunDir], seed: int,
              max_length: Optional[int] = None, checkpoint_dir: Optional[Path] = None,
              resume: bool = False) -> LoopResult:
    """SFT on ``rows``; sequences are cut at ``max_length`` (default: :func:`sft_length`), the cut rows counted
    and logged."""
    from transformers import get_cosine_schedule_with_warmup

    import logging

    sft = cfg.sft
    max_length = max_length or sft_length(cfg, model)
    data = tokenize_sft(tokenizer, rows, max_length)
    cut = count_truncated(tokenizer, rows, max_length)
    if cut:
        logging.getLogger("r2m").warning("sft: %d of %d rows are longer than %d tokens (sft.max_length or the model's "
                                         "positions) and were cut at the end", cut, len(rows), max_length)
    steps = num_steps(len(data), sft.batch_size, sft.epochs, sft.max_steps)
    fp32_master_weights(model, "sft", accelerator)
    opt = torch.optim.AdamW(model.parameters(), lr=sft.lr, weight_decay=sft.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(sft.warmup_ratio * steps), steps)
    configure_deepspeed(accelerator, sft.batch_size // accelerator.num_processes, sft.max_grad_norm)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    device = accelerator.device

    def loss_fn(idx: torch.Tensor) -> LossOutput:
        batch = [data[i] for i in idx.tolist()]
        ids = right_pad([b[0] for b in batch], tokenizer.pad_token_id).to(device)  # (b, S)
        labels = right_pad([b[1] for b in batch], IGNORE).to(device)  # (b, S)
        attn = right_pad([[1] * len(b[0]) for b in batch], 0).to(device)  # (b, S)
        return LossOutput(model(input_ids=ids, attention_mask=attn, labels=labels).loss, {})

    return supervised_loop(model, opt, sched, accelerator, n_items=len(data), batch_size=sft.batch_size, steps=steps,
                           seed=seed, loss_fn=loss_fn, prefix="sft", log_every=sft.log_every,
                           max_grad_norm=sft.max_grad_norm, run=run, fingerprint=sft_fingerprint(cfg, seed, len(data)),
                           keep_checkpoints=cfg.run.keep_checkpoints, checkpoint_dir=checkpoint_dir,
                           save_every=sft.save_every, resume=resume, show_progress=cfg.run.progress)


def sft_fingerprint(cfg: Config, seed: int, n_rows: int) -> dict:
    """What determines an SFT run (not the caller's RL settings: world artifacts resume across callers)."""
    return {**fingerprint(cfg.sft, "sft."), "seed": seed, "rows": n_rows}
