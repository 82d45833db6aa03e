"""Sampling primitives shared by the rollout and the generation backends: prompt tokenisation, padding,
HF ``generate`` and the assembly of its output into a :class:`Generation` (kept below both, so that
:mod:`r2m.experience.generation` and :mod:`r2m.experience.rollout` import it and not each other)."""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------
# Tokenised prompts
# ---------------------------------------------------------------------------------------------


class PromptSet(NamedTuple):
    texts: list[str]
    ids: list[list[int]]
    skipped: int
    truncated: int


def tokenize_prompts(tokenizer, prompts: Sequence[str], max_tokens: int, overlong: str) -> PromptSet:
    """Tokenise prompts once; over-long ones are truncated from the left or skipped (and counted)."""
    texts, ids, skipped, truncated = [], [], 0, 0
    for text, p in zip(prompts, tokenizer(list(prompts), add_special_tokens=True)["input_ids"]):
        if len(p) > max_tokens:
            if overlong == "skip":
                skipped += 1
                continue
            p, truncated = p[-max_tokens:], truncated + 1
        texts.append(text)
        ids.append(list(p))
    return PromptSet(texts, ids, skipped, truncated)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them (so log-probs match sampling)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------------
# Generation and log-probs
# ---------------------------------------------------------------------------------------------


class Generation(NamedTuple):
    sequences: torch.Tensor  # (B, P+R)
    attention_mask: torch.Tensor  # (B, P+R)
    action_mask: torch.Tensor  # (B, R) 1 on response tokens up to and including the first eos
    prompt_len: int  # P


@contextlib.contextmanager
def eval_mode(*models: Optional[nn.Module]) -> Iterator[None]:
    """Run ``models`` in eval mode (no dropout), then restore each one's mode.

    Rollout passes (sampling, pi_old's log-probs, values) are measurements of the current policy,
    not training steps: with dropout on (e.g. LoRA's) pi_old would be a noisy sample and the first
    update's ratio would not start at 1.
    """
    live = [m for m in models if m is not None]
    modes = [m.training for m in live]
    for m in live:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(live, modes):
            m.train(mode)


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, temperature: float,
             max_new_tokens: int, eos_token_id: int, pad_token_id: int) -> Generation:
    """Sample one response per prompt row (repeat rows for K samples). temperature 0 is greedy."""
    from transformers import GenerationConfig

    gen_cfg = GenerationConfig(
        do_sample=temperature > 0, temperature=temperature if temperature > 0 else None, top_k=0, top_p=1.0,
        max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
    )
    with eval_mode(model):
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg)  # (B, P+R)
    return assemble_generation(out, prompt_mask, eos_token_id, pad_token_id)


def assemble_generation(out: torch.Tensor, prompt_mask: torch.Tensor, eos_token_id: int, pad_token_id: int,
                        lengths: Optional[torch.Tensor] = None) -> Generation:
    """``out`` (B, P+R) = [left-padded prompt | response] -> masks; every backend goes through here.

    ``lengths`` (B,): tokens each response really has (a backend that stops rows on its own pads them).
    """
    P = prompt_mask.shape[1]
    response = out[:, P:]  # (B, R)
    is_eos = response == eos_token_id
    # Tokens up to and including the first eos; after it, generate pads.
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # (B, R) strictly after the first eos
    action_mask = (~after_eos).long()
    if lengths is not None:
        action_mask = action_mask * (torch.arange(response.shape[1], device=out.device) < lengths.unsqueeze(1))
    attention_mask = torch.cat([prompt_mask, action_mask], dim=1)  # (B, P+R)
    sequences = torch.where(attention_mask.bool(), out, torch.full_like(out, pad_token_id))
    return Generation(sequences, attention_mask, action_mask, P)


def concat_generations(parts: Sequence[Generation], pad_token_id: int) -> Generation:
    """Stack generations: prompts left-padded to the widest prompt, responses right-padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    P = max(g.prompt_len for g in parts)
    R = max(g.action_mask.shape[1] for g in parts)

    def pad(x: torch.Tensor, g: Generation, value: int) -> torch.Tensor:
        return F.pad(x, (P - g.prompt_len, R - g.action_mask.shape[1]), value=value)  # (b, P+R)

    return Generation(torch.cat([pad(g.sequences, g, pad_token_id) for g in parts]),
                      torch.cat([pad(g.attention_mask, g, 0) for g in parts]),
                      torch.cat([F.pad(g.action_mask, (0, R - g.action_mask.shape[1])) for g in parts]), P)


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """The sampling seed of one rollout chunk: a function of (run seed, step, global chunk index) only."""
    return (seed * 1_000_003 + step * 10_007 + chunk) % (2**63 - 1)
