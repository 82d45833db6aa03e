"""R2M's policy feedback h from a policy forward pass, one definition for every path (rollout, the last-epoch
refresh, evaluation, Table 3, the TRL integration, ``FeedbackRewardModel.score``), with the padding helpers it
needs. In the models layer so that a reward model can compute h for texts without the experience layer."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, TypeVar

import torch
from torch import nn

from r2m.errors import ModelError


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


class Feedback(NamedTuple):
    hidden: torch.Tensor  # (B, S-1, D_p)
    mask: torch.Tensor  # (B, S-1)


def feedback_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) -> (B, S-1): 1 on each row's valid positions except its own last one (see feedback_states)."""
    m = attention_mask.long()  # (B, S)
    positions = torch.arange(m.shape[1], device=m.device)  # (S,)
    last = (positions * m).argmax(dim=-1, keepdim=True)  # (B, 1) each row's last valid position
    keep = m.scatter(1, last, 0)  # (B, S) a row with no valid position stays all zero
    return keep[:, :-1].to(attention_mask.dtype)


def feedback_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> Feedback:
    """R2M's h from a forward pass: h_ij ∈ R^{(S_ij − 1) × D_p}, each row's own states without its own last token.

    hidden (B, S, D_p), attention_mask (B, S) -> Feedback((B, S-1, D_p), (B, S-1)). The states at a row's
    positions except its last valid one are those that produced the row's log-probs. The last valid
    position is found per row, so the result does not depend on the padding side or on the other rows of
    the batch; the batch's last column is then dropped (it holds no row's kept position).
    """
    return Feedback(hidden[:, :-1], feedback_mask(attention_mask))


# ---------------------------------------------------------------------------------------------
# The decoder's last-layer states, from inside the model's own forward
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")


def causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside the wrappers a policy may come in: DDP or DeepSpeed (``.module``), the
    adapter-free reference (``.peft_model``, :class:`r2m.models.lora.AdapterFreeReference`) and PEFT
    (``get_base_model()``). Its ``get_decoder()`` and ``get_output_embeddings()`` are the backbone and LM head."""
    while True:
        inner = getattr(model, "peft_model", None)
        if inner is None and isinstance(getattr(model, "module", None), nn.Module):
            inner = model.module
        if inner is None and hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        if inner is None:
            return model
        model = inner


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def last_states(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                read: Callable[[torch.Tensor], T], check_head: bool = False) -> T:
    """``read(states)`` of the decoder's last-layer states (B, S, D) (after its final norm: what the LM head
    reads, and ``hidden_states[-1]``), computed inside ``model``'s own forward.

    ``model`` is called as it is, so whatever wraps its forward still applies: DDP's gradient synchronisation,
    FSDP's gathered parameters, accelerate's autocast. A forward hook on the decoder hands ``read`` the states
    while that forward runs. The model's own LM head is asked for one position only (``logits_to_keep=1``,
    where the model takes it), so no (B, S, V) logits exist, and accelerate's float32 copy of the outputs
    covers (B, 1, V). Positions skip left padding, as ``generate`` counts them; no KV cache is built.

    ``check_head``: refuse a model whose logits are not its output embeddings applied to these states (a
    softcap or scale after the head, as some families apply), by comparing the two at the last position.
    """
    lm = causal_lm(model)
    out: list = []

    def hook(module, args, output):
        states = output[0]  # (B, S, D) last_hidden_state; returning None keeps the output
        out.append(read(states))
        if check_head:
            out.append(lm.get_output_embeddings()(states[:, -1]).detach())  # (B, V)

    handle = lm.get_decoder().register_forward_hook(hook)
    extra = {"logits_to_keep": 1} if _takes_logits_to_keep(type(lm)) else {}
    try:
        result = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                       use_cache=False, **extra)
    finally:
        handle.remove()
    if check_head:
        _check_head(lm, out[1], result.logits[:, -1])
    return out[0]


def _check_head(lm: nn.Module, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """``ours`` (B, V) = head(last states) against the model's own last-position logits ``theirs`` (B, V)."""
    ours, theirs = ours.float(), theirs.detach().float()
    scale = theirs.abs().max().clamp(min=1.0)
    if not torch.allclose(ours, theirs, rtol=1e-2, atol=1e-2 * scale.item()):
        raise ModelError(f"{type(lm).__name__}: its logits are not its output embeddings applied to the decoder's last "
                         f"states (largest difference {(ours - theirs).abs().max().item():.3g}: a softcap or scale "
                         "after the LM head?); r2m's response-only log-prob pass does not support this model")


@torch.no_grad()
def sequence_feedback(policy: nn.Module, sequences: Sequence[Sequence[int]], pad_id: int,
                      device: torch.device) -> Feedback:
    """R2M's h over token sequences the policy read (prompt ids then response ids), left-padded.

    ``pad_id`` only fills the padding, which the attention mask hides (any id works).
    """
    ids, mask = left_pad(sequences, pad_id)  # (B, S)
    ids, mask = ids.to(device), mask.to(device)
    return feedback_states(last_states(policy, ids, mask, torch.Tensor.detach), mask)  # (B, S-1, D_p)


@torch.no_grad()
def text_feedback(policy: nn.Module, tokenizer, prompts: Sequence[str], responses: Sequence[str],
                  device: torch.device) -> Feedback:
    """R2M's h for arbitrary (prompt, response) texts, tokenised by the policy's own tokenizer.

    The same :func:`feedback_states` as rollout, so an (x, y) gets the same h here (left-padded) as in a
    rollout batch (left-padded prompt, right-padded response), up to float rounding.
    """
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    # The mask marks the padding; a user's pad-less tokenizer (a TRL trainer's) pads with its eos id.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return sequence_feedback(policy, [p + r for p, r in zip(p_ids, r_ids)], pad, device)
