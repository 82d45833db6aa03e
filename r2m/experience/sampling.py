"""Sampling primitives shared by the rollout and the generation backends: prompt tokenisation, padding,
HF ``generate`` and the assembly of its output into a :class:`Generation` (kept below both, so that
:mod:`r2m.experience.generation` and :mod:`r2m.experience.rollout` import it and not each other)."""

from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from r2m.models.forward import eval_mode


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


class Generation(NamedTuple):
    sequences: torch.Tensor  # (B, P+R)
    attention_mask: torch.Tensor  # (B, P+R)
    action_mask: torch.Tensor  # (B, R) 1 on response tokens up to and including the first eos
    prompt_len: int  # P
    logprobs: Optional[torch.Tensor] = None  # (B, R) log pi(y_t | ·) at the sampling temperature, from generate itself
    hidden: Optional[torch.Tensor] = None  # (B, P+R-1, D) last-layer states before tokens 1..P+R-1, from generate


NEUTRAL_WARPERS = dict(top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
"""The sampling-only fields (warpers) at the values that leave softmax(logits / T) alone."""
NEUTRAL_SAMPLING = dict(
    **NEUTRAL_WARPERS, repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0, num_beams=1, num_return_sequences=1, length_penalty=1.0,
    guidance_scale=1.0, renormalize_logits=False, remove_invalid_values=False, use_cache=True,
)
"""Every logits-processing field of ``GenerationConfig`` at the value that leaves the logits alone. transformers
fills each field a passed config leaves unset from the checkpoint's ``generation_config.json`` (Qwen2.5-Instruct:
repetition_penalty 1.05, top_k 20, top_p 0.8), so r2m sets them all; the fields whose only neutral value is
unset (min_p, min_new_tokens, suppress_tokens, ...) are kept out by :func:`own_generation_config`."""


def sampling_config(temperature: float, max_new_tokens: int, eos_token_id: int, pad_token_id: int, **outputs):
    """The ``GenerationConfig`` of r2m's sampling: the plain softmax(logits / temperature) (greedy at 0: the argmax,
    without the sampling-only fields), the distribution :func:`response_forward` scores, whatever the checkpoint's
    generation config says."""
    from transformers import GenerationConfig

    fields = dict(NEUTRAL_SAMPLING)
    if temperature > 0:
        fields.update(do_sample=True, temperature=temperature)
    else:
        fields = {k: v for k, v in fields.items() if k not in NEUTRAL_WARPERS}
        fields.update(do_sample=False)
    return GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                            **fields, **outputs)


@contextlib.contextmanager
def own_generation_config(model: nn.Module) -> Iterator[None]:
    """Within the block, every ``generation_config`` of ``model`` (and of the models it wraps: PEFT, DDP, or holds
    as a plain attribute: :class:`r2m.models.lora.AdapterFreeReference`) is an empty one, so that ``generate``
    inherits nothing from the checkpoint: the fields that no value switches off (min_p, suppress_tokens,
    bad_words_ids, sequence_bias, forced_eos_token_id, ...) included."""
    from transformers import GenerationConfig

    roots = [model, *(v for v in vars(model).values() if isinstance(v, nn.Module))]
    owners = list({id(m): m for r in roots for m in r.modules()
                   if isinstance(getattr(m, "generation_config", None), GenerationConfig)}.values())
    saved = [m.generation_config for m in owners]
    for m in owners:
        m.generation_config = GenerationConfig()
    try:
        yield
    finally:
        for m, cfg in zip(owners, saved):
            m.generation_config = cfg


_UNSET_ONLY = ("min_p", "min_new_tokens", "min_length", "top_h", "suppress_tokens", "begin_suppress_tokens",
               "bad_words_ids", "sequence_bias", "forced_bos_token_id", "forced_eos_token_id",
               "exponential_decay_length_penalty", "watermarking_config")


def inherited_sampling(model: nn.Module) -> dict:
    """The fields of ``model``'s own generation config that would change what ``generate`` samples: what
    r2m's :func:`generate` keeps out (for a log line)."""
    cfg = getattr(model, "generation_config", None)
    if cfg is None:
        return {}
    fields = {**{k: getattr(cfg, k, None) for k in (*NEUTRAL_SAMPLING, *_UNSET_ONLY)}, "temperature": cfg.temperature}
    neutral = {**NEUTRAL_SAMPLING, "temperature": 1.0, "min_p": 0.0, "min_new_tokens": 0, "min_length": 0}
    return {k: v for k, v in fields.items() if v is not None and v != neutral.get(k) and k != "use_cache"}


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, temperature: float,
             max_new_tokens: int, eos_token_id: int, pad_token_id: int, with_logprobs: bool = False,
             with_hidden: bool = False) -> Generation:
    """Sample one response per prompt row (repeat rows for K samples) from softmax(logits / temperature), with
    nothing from the checkpoint's generation config (:func:`sampling_config`, :func:`own_generation_config`).
    temperature 0 is greedy.

    ``with_logprobs``: also the sampled tokens' log-probs from the logits ``generate`` sampled from
    (``rl.old_logprobs=generation``, docs/GENERATION.md): the raw logits / temperature, as
    :func:`response_forward` computes them, but through the KV cache (equal up to float rounding).
    ``with_hidden``: also the last layer's states, as :func:`step_states` lays them out (R2M's h).
    """
    extra = {}
    if with_logprobs or with_hidden:
        extra = dict(return_dict_in_generate=True, output_logits=with_logprobs, output_hidden_states=with_hidden)
    gen_cfg = sampling_config(temperature, max_new_tokens, eos_token_id, pad_token_id, **extra)
    with eval_mode(model), own_generation_config(model):
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=gen_cfg)
    if not extra:
        return assemble_generation(out, prompt_mask, eos_token_id, pad_token_id)  # out: (B, P+R)
    gen = assemble_generation(out.sequences, prompt_mask, eos_token_id, pad_token_id)
    tokens = out.sequences[:, prompt_mask.shape[1]:]  # (B, R)
    return gen._replace(logprobs=sampled_logprobs(out.logits, tokens, temperature) if with_logprobs else None,
                        hidden=step_states(out.hidden_states) if with_hidden else None)


def step_states(hidden_states: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """``generate``'s per-step hidden states -> the last layer's over positions 0..P+R-2: (B, P+R-1, D).

    Step 0 (the prefill) holds the prompt's P positions, step t >= 1 the one position P+t-1 fed at that
    step. The last sampled token is never fed back, so position P+R-1 has no state: exactly the column
    :func:`feedback_states` drops.
    """
    return torch.cat([layers[-1] for layers in hidden_states], dim=1)


def sampled_logprobs(step_logits: Sequence[torch.Tensor], tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits_t / temperature)[token_t] per generation step: R tensors (B, V), tokens (B, R) -> (B, R).

    One step at a time, so at most one (B, V) float32 block is alive (not the (B, R, V) of a forward pass).
    """
    out = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)  # (B, R)
    for t, logits in enumerate(step_logits):
        z = logits.float()
        if temperature > 0:
            z = z / temperature
        out[:, t] = torch.gather(F.log_softmax(z, dim=-1), -1, tokens[:, t: t + 1]).squeeze(-1)
    return out


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

    logprobs = hidden = None
    if all(g.logprobs is not None for g in parts):
        logprobs = torch.cat([F.pad(g.logprobs, (0, R - g.logprobs.shape[1])) for g in parts])  # (B, R)
    if all(g.hidden is not None for g in parts):  # (b, P_g+R_g-1, D) -> (B, P+R-1, D)
        hidden = torch.cat([F.pad(g.hidden, (0, 0, P - g.prompt_len, R - g.action_mask.shape[1])) for g in parts])
    return Generation(torch.cat([pad(g.sequences, g, pad_token_id) for g in parts]),
                      torch.cat([pad(g.attention_mask, g, 0) for g in parts]),
                      torch.cat([F.pad(g.action_mask, (0, R - g.action_mask.shape[1])) for g in parts]), P,
                      logprobs, hidden)


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """The sampling seed of one rollout chunk: a function of (run seed, step, global chunk index) only."""
    return (seed * 1_000_003 + step * 10_007 + chunk) % (2**63 - 1)
