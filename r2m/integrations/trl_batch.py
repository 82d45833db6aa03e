"""What R2M reads of a TRL reward call, and the groups its GREBT update keeps (:mod:`r2m.integrations.trl`).

TRL calls a reward function with ``prompts`` (text, or chat messages for a conversational dataset),
``completions`` (text, or one assistant message) and ``completion_ids`` (the sampled token ids). Each
model reads its own input:

- the policy's h is taken over the tokens the policy read and wrote: the prompt tokenised as TRL
  tokenises it (``processing_class(text=prompts)``, or the policy's chat template with
  ``add_generation_prompt=True`` and the trainer's ``chat_template_kwargs``), then ``completion_ids``;
- the reward model reads texts: a plain prompt then the completion decoded with its special tokens
  (``<eos>`` is scored, as in ``r2m rl``), or, for chat messages, the conversation rendered by the RM's
  own chat template (:class:`r2m.data.chat.ChatPrompt` carries the messages to
  :class:`r2m.data.chat.RMRenderer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence

import torch

from r2m.data.chat import ChatPrompt, strip_bos_text
from r2m.errors import DataError, ModelError


def is_chat(value: Any) -> bool:
    """TRL's test for a conversational field: a list of message dicts with a ``role``."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


class PolicyRows(NamedTuple):
    """One reward call, as each model reads it."""

    prompts: list[str]
    """(B,) the RM's prompts: text, or a :class:`ChatPrompt` (the policy's rendering, carrying the messages)."""
    responses: list[str]
    """(B,) completion texts, special tokens kept."""
    sequences: list[list[int]]
    """(B,) the policy's token ids: prompt then completion."""


def _check_messages(messages: list, where: str) -> None:
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise DataError(f"R2MReward: {where}, message {j}: expected {{'role': ..., 'content': <text>}}, got "
                            f"{m!r:.120}; R2M reads text messages (no images or content blocks)")


def _chat_prompt_ids(tokenizer, prompts: list, chat_kwargs: dict) -> tuple[list[list[int]], list[str]]:
    """Token ids and text of each chat prompt, as TRL renders it for the policy (``add_generation_prompt``)."""
    for i, p in enumerate(prompts):
        _check_messages(p, f"prompt {i}")
    try:
        ids = tokenizer.apply_chat_template(conversation=prompts, add_generation_prompt=True, tokenize=True,
                                            return_dict=True, **chat_kwargs)["input_ids"]
        texts = tokenizer.apply_chat_template(conversation=prompts, add_generation_prompt=True, tokenize=False,
                                              **chat_kwargs)
    except Exception as e:  # jinja's TemplateError, a missing template, whatever a template raises itself
        raise ModelError(f"R2MReward: the policy tokenizer's chat template cannot render the prompts "
                         f"({type(e).__name__}: {e})") from e
    return [list(x) for x in ids], [strip_bos_text(t, tokenizer) for t in texts]


def _unique(prompts: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """Consecutive repeats folded (a group's K rows share their prompt): the distinct prompts and each row's index."""
    firsts, index = [], []
    for i, p in enumerate(prompts):
        if i == 0 or p != prompts[i - 1]:
            firsts.append(p)
        index.append(len(firsts) - 1)
    return firsts, index


def prompt_views(tokenizer, prompts: Sequence[Any], chat_kwargs: dict) -> tuple[list[str], list[list[int]]]:
    """Each row's prompt for the RM and its token ids for the policy."""
    firsts, index = _unique(prompts)
    chat = [is_chat(p) for p in firsts]
    if any(chat) and not all(chat):
        raise DataError("R2MReward: the batch mixes text prompts and chat-message prompts")
    if all(chat):
        ids, texts = _chat_prompt_ids(tokenizer, firsts, chat_kwargs)
        views = [ChatPrompt(t, m) for t, m in zip(texts, firsts)]
    else:
        if not all(isinstance(p, str) for p in firsts):
            bad = next(p for p in firsts if not isinstance(p, str))
            raise DataError(f"R2MReward: a prompt must be text or a list of chat messages, got {type(bad).__name__}")
        ids, views = [list(x) for x in tokenizer(text=list(firsts))["input_ids"]], list(firsts)
    return [views[i] for i in index], [ids[i] for i in index]


def completion_text(completion: Any, i: int) -> str:
    """A completion's text: itself, or the content of its one assistant message."""
    if isinstance(completion, str):
        return completion
    if is_chat(completion):
        if len(completion) != 1 or completion[0].get("role") != "assistant":
            raise DataError(f"R2MReward: completion {i} has {len(completion)} messages "
                            f"({[m.get('role') for m in completion]}); R2M scores one assistant reply (no tool turns)")
        _check_messages(completion, f"completion {i}")
        return completion[0]["content"]
    raise DataError(f"R2MReward: completion {i} is {type(completion).__name__}, expected text or chat messages")


def read_rows(tokenizer, prompts: Sequence[Any], completions: Sequence[Any],
              completion_ids: Optional[Sequence[Sequence[int]]], chat_kwargs: dict) -> PolicyRows:
    """A TRL reward call as the RM (texts) and the policy (token ids) read it."""
    if len(completions) != len(prompts) or (completion_ids is not None and len(completion_ids) != len(prompts)):
        raise DataError(f"R2MReward: {len(prompts)} prompts, {len(completions)} completions and "
                        f"{'no' if completion_ids is None else len(completion_ids)} completion_ids")
    views, prompt_ids = prompt_views(tokenizer, prompts, chat_kwargs)
    if completion_ids is None:  # called directly with texts: the completion as the tokenizer encodes it
        responses = [completion_text(c, i) for i, c in enumerate(completions)]
        tail = [list(x) for x in tokenizer(responses, add_special_tokens=False)["input_ids"]] if responses else []
    else:  # as sampled; decoded with special tokens so the RM scores the <eos> the policy wrote
        tail = [list(ids) for ids in completion_ids]
        responses = [tokenizer.decode(ids, skip_special_tokens=False) for ids in tail]
    return PolicyRows(views, responses, [p + c for p, c in zip(prompt_ids, tail)])


@dataclass
class R2MBatch:
    """The groups of one optimiser step: what :meth:`r2m.updates.grebt.GREBTUpdater.update` reads of an Experience."""

    rm_embeddings: torch.Tensor
    """(B, D_m) H_last from scoring (the backbone is frozen, so the update reuses it)."""
    policy_hidden: Optional[torch.Tensor]
    """(B, S-1, D_p) h, or None for the RM-head baseline (no fusion)."""
    policy_mask: Optional[torch.Tensor]
    """(B, S-1) 1 on h's real positions."""
    step: int
    """t: ``state.global_step`` when the batch was scored."""
    n: int
    """Groups (prompts) in the batch."""
    k: int
    """Completions per group (``num_generations``)."""
    prompts: list
    """(n,) each group's prompt, as the trainer passed it."""
    gold = None
    """No gold reward inside TRL (``pair_choice=gold`` is refused)."""


def _left_pad_to(x: Optional[torch.Tensor], width: int) -> Optional[torch.Tensor]:
    """(B, S, ...) -> (B, width, ...), zeros on the left (h's mask marks them as padding)."""
    if x is None or x.shape[1] == width:
        return x
    pad = x.new_zeros((x.shape[0], width - x.shape[1], *x.shape[2:]))
    return torch.cat([pad, x], dim=1)


def merge(batches: Sequence[R2MBatch]) -> R2MBatch:
    """The groups of several generation batches scored within one optimiser step, as one batch."""
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    if any(b.step != first.step or b.k != first.k for b in batches):
        raise ValueError(f"R2M: one optimiser step scored batches at steps {[b.step for b in batches]} with group "
                         f"sizes {[b.k for b in batches]}; expected one step and one group size")
    hidden = None
    if first.policy_hidden is not None:
        width = max(b.policy_hidden.shape[1] for b in batches)
        hidden = torch.cat([_left_pad_to(b.policy_hidden, width) for b in batches])  # (ΣB, S-1, D_p)
        mask = torch.cat([_left_pad_to(b.policy_mask, width) for b in batches])  # (ΣB, S-1)
    return R2MBatch(torch.cat([b.rm_embeddings for b in batches]), hidden, mask if hidden is not None else None,
                    first.step, sum(b.n for b in batches), first.k, [p for b in batches for p in b.prompts])
