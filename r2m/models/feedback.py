"""R2M's policy feedback h from a policy forward pass, one definition for every path (rollout, the policy update's
last epoch, evaluation, Table 3, the TRL integration, ``FeedbackRewardModel.score``). In the models layer so that
a reward model can compute h for texts without the experience layer."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from r2m.models.forward import last_states, left_pad


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
