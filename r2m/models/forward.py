"""How r2m runs a causal LM forward pass, for every model and path (rollout, the policy update, evaluation, R2M's h):
left padding and the positions that skip it, eval mode for measurement passes, the causal LM inside its wrappers,
and the decoder's last-layer states read from inside the model's own forward."""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, Iterator, Optional, Sequence, TypeVar

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
    covers (B, 1, V). Positions skip left padding, as ``generate`` counts them; no KV cache is built. Without
    gradients, the decoder and the head run with autocast's weight-cast cache off (:func:`_uncached_autocast`).

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

    decoder = lm.get_decoder()
    handles = [decoder.register_forward_hook(hook)]
    if not torch.is_grad_enabled():  # after `hook`: its head and log-softmax run inside, too
        handles += _uncached_autocast(decoder, lm.get_output_embeddings())
    extra = {"logits_to_keep": 1} if _takes_logits_to_keep(type(lm)) else {}
    try:
        result = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                       use_cache=False, **extra)
    finally:
        for h in handles:
            h.remove()
    if check_head:
        _check_head(lm, out[1], result.logits[:, -1])
    return out[0]


def _uncached_autocast(*modules: nn.Module) -> list:
    """Hooks that run each of ``modules`` with autocast's weight-cast cache off, where autocast is on.

    Autocast keeps the low-precision cast of every float32 leaf tensor that requires grad (the fp32 master weights)
    until the outermost autocast region ends, so that a training forward casts each weight once for its forward and
    backward. A no-grad pass has no backward: the cache only holds a 16-bit copy of every weight it has used until
    the forward ends (5.1 GiB for Qwen2.5-3B). With the cache off each cast is freed after its op, the same values.
    Entered inside the model's own forward (a module hook), so inside accelerate's autocast, whose entry would turn
    the cache back on. Returns the hook handles (``.remove()`` each)."""
    entered: list[Optional[torch.autocast]] = []  # one per module running, innermost last

    def enter(module, args):
        device = next(module.parameters()).device.type
        ctx = None
        if torch.is_autocast_enabled(device) and torch.is_autocast_cache_enabled():
            ctx = torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False)
            ctx.__enter__()  # nested: its exit restores the enclosing autocast's state and clears nothing
        entered.append(ctx)

    def leave(module, args, output):  # always_call: also when the forward raised
        ctx = entered.pop() if entered else None
        if ctx is not None:
            ctx.__exit__(None, None, None)

    handles = []
    for m in modules:
        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave, always_call=True)]
    return handles


def _check_head(lm: nn.Module, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """``ours`` (B, V) = head(last states) against the model's own last-position logits ``theirs`` (B, V)."""
    ours, theirs = ours.float(), theirs.detach().float()
    scale = theirs.abs().max().clamp(min=1.0)
    if not torch.allclose(ours, theirs, rtol=1e-2, atol=1e-2 * scale.item()):
        raise ModelError(f"{type(lm).__name__}: its logits are not its output embeddings applied to the decoder's last "
                         f"states (largest difference {(ours - theirs).abs().max().item():.3g}: a softcap or scale "
                         "after the LM head?); r2m's response-only log-prob pass does not support this model")
