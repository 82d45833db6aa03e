"""The policy's log-prob pass over rollout rows, at real vocabulary sizes.

Rows are ``[left-padded prompt | right-padded response]``: every response starts at column P and the states
at columns P-1 .. P+R-2 predict its tokens. The pass runs the decoder once (:func:`r2m.models.forward.last_states`,
inside the model's own forward) and applies the LM head to the real response tokens only, a chunk of tokens
at a time, with a selective log-softmax (``z[y] - logsumexp(z)`` in float32): no (B, P+R, V) logits exist, and
at most one chunk of (tokens, V) float32 logits at a time outside autograd (TRL's ``logits_to_keep`` and
``selective_log_softmax``). Each call first cuts the columns that are padding in every row, so a pass is sized
by its own rows' widest prompt and widest response, not by the step's.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from r2m.core.losses import entropy_from_logits
from r2m.models.forward import causal_lm, last_states

LOGIT_CHUNK_ELEMENTS = 2**26
"""Logits per chunk of the selective log-softmax: tokens per chunk = this // V (441 at V = 151,936: 256 MiB
of float32 logits)."""


class Forward(NamedTuple):
    logprobs: torch.Tensor  # (B, R) log pi(y_t | x, y_<t) of the response tokens (0 on response padding)
    entropy: Optional[torch.Tensor]  # (B, R) (0 on response padding)
    hidden: Optional[torch.Tensor]  # (B, P+R, D) last-layer states, detached (0 on columns no row uses)


class Columns(NamedTuple):
    """The columns [start, stop) of a row batch that hold a real token in some row; the rest is padding of
    every row (left padding of the prompts, right padding of the responses)."""

    start: int
    stop: int
    prompt_len: int  # P of the full layout
    width: int  # P+R of the full layout

    def cut(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P+R, ...) -> (B, stop-start, ...)."""
        return x[:, self.start: self.stop]

    @property
    def cut_prompt_len(self) -> int:
        return self.prompt_len - self.start

    def response(self, x: torch.Tensor) -> torch.Tensor:
        """A response tensor of the cut, (B, stop-P, ...), zero-padded back to (B, R, ...)."""
        pad = [0, 0] * (x.dim() - 2) + [0, self.width - self.stop]
        return F.pad(x, pad)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """A per-column tensor of the cut, (B, stop-start, ...), zero-padded back to (B, P+R, ...)."""
        pad = [0, 0] * (x.dim() - 2) + [self.start, self.width - self.stop]
        return F.pad(x, pad)


def real_columns(attention_mask: torch.Tensor, prompt_len: int) -> Columns:
    """The :class:`Columns` of ``attention_mask`` (B, P+R); they always include P-1 and P (one response column)."""
    used = attention_mask.bool().any(0).nonzero().flatten().tolist()  # (n,) columns some row uses
    start = min(used[0], prompt_len - 1) if used else prompt_len - 1
    stop = max(used[-1] + 1, prompt_len + 1) if used else prompt_len + 1
    return Columns(start, stop, prompt_len, attention_mask.shape[1])


def token_logprobs(head: nn.Module, states: torch.Tensor, targets: torch.Tensor, temperature: float,
                   with_entropy: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """log softmax(head(states) / temperature)[targets] and the entropy, (N, D) and (N,) -> (N,), (N,) float32.

    A chunk of tokens at a time: the logits z (c, V) are upcast to float32 once, divided by the temperature in
    place, and log p(y) = z[y] - logsumexp(z); the entropy reads z detached. With gradients, each chunk's z is
    what autograd keeps (logsumexp's input), once.
    """
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    size = max(1, LOGIT_CHUNK_ELEMENTS // vocab)
    logprobs, entropies = [], []
    for s, y in zip(states.split(size), targets.split(size)):
        z = head(s).float()  # (c, V)
        if temperature > 0 and temperature != 1.0:
            z.div_(temperature)  # in place: no second (c, V) copy
        logprobs.append(z.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1))  # (c,)
        if with_entropy:
            entropies.append(entropy_from_logits(z.detach()))  # (c,)
    entropy = torch.cat(entropies) if with_entropy else None
    return torch.cat(logprobs), entropy


def response_forward(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                     temperature: float, with_entropy: bool = False, with_hidden: bool = False) -> Forward:
    """Log-probs of the response tokens under ``model`` at the sampling temperature (and R2M's h: the last
    layer's states). ``model`` is called as it is (DDP's forward runs for gradient synchronisation)."""
    cols = real_columns(attention_mask, prompt_len)
    seq, mask, P = cols.cut(sequences), cols.cut(attention_mask), cols.cut_prompt_len
    real = mask[:, P:].bool()  # (B, R') the response tokens
    targets = seq[:, P:][real]  # (N,)
    head = causal_lm(model).get_output_embeddings()

    def read(states: torch.Tensor):  # (B, S', D)
        lp, ent = token_logprobs(head, states[:, P - 1: -1][real], targets, temperature, with_entropy)  # (N,)
        return lp, ent, states.detach() if with_hidden else None

    lp, ent, hidden = last_states(model, seq, mask, read, check_head=True)

    def spread(x: torch.Tensor) -> torch.Tensor:  # (N,) -> (B, R)
        return cols.response(x.new_zeros(real.shape).masked_scatter(real, x))

    return Forward(spread(lp), spread(ent) if with_entropy else None,
                   cols.sequence(hidden) if with_hidden else None)


def length_sorted_chunks(attention_mask: torch.Tensor, prompt_len: int, rows: int) -> list[torch.Tensor]:
    """Row indices in chunks of ``rows`` (one chunk of all rows when 0), rows of similar response and prompt
    length together, so that each chunk's pass is cut to its own widest row (:func:`real_columns`)."""
    n = attention_mask.shape[0]
    if not rows or rows >= n:
        return [torch.arange(n)]
    lengths = attention_mask.long().cpu()
    key = lengths[:, prompt_len:].sum(-1) * (prompt_len + 1) + lengths[:, :prompt_len].sum(-1)  # (B,)
    return list(torch.argsort(key, stable=True).split(rows))


def chunked_response_forward(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor,
                             prompt_len: int, temperature: float, rows: int = 0, with_hidden: bool = False,
                             keep_hidden: Callable[[torch.Tensor], torch.Tensor] = lambda h: h) -> Forward:
    """:func:`response_forward` (no entropy) over chunks of ``rows`` rows (all at once when 0), sorted by length.

    ``keep_hidden`` maps each chunk's states (b, P+R, D) to what is kept of them (R2M keeps h in its store's
    device and dtype), so the whole batch's states never exist on the device at once.
    """
    chunks = length_sorted_chunks(attention_mask, prompt_len, rows)
    if len(chunks) == 1:
        f = response_forward(model, sequences, attention_mask, prompt_len, temperature, with_hidden=with_hidden)
        return f._replace(hidden=keep_hidden(f.hidden) if with_hidden else None)
    logprobs = hidden = None
    for idx in chunks:
        r = idx.to(sequences.device)
        f = response_forward(model, sequences[r], attention_mask[r], prompt_len, temperature, with_hidden=with_hidden)
        if logprobs is None:
            logprobs = f.logprobs.new_empty((sequences.shape[0], *f.logprobs.shape[1:]))  # (B, R)
        logprobs[r] = f.logprobs
        if with_hidden:
            h = keep_hidden(f.hidden)  # (b, ..., D)
            if hidden is None:
                hidden = h.new_empty((sequences.shape[0], *h.shape[1:]))
            hidden[idx.to(hidden.device)] = h
    return Forward(logprobs, None, hidden)
