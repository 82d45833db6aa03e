"""What the reward model reads of a world prompt (the ``blind`` world, issue 14 item 4).

In the ``blind`` world (``world.rm_prompt_digits = N > 0``) the RM reads only the first N prompt digits; the
others are replaced by ``<unk>``, so the RM still sees how many digits there are but not which. The gold reward
and the policy read the whole prompt, so the policy's hidden states carry gold-relevant information (the hidden
digits, which the sorted answer must contain) that the RM's own input lacks: R2M's premise that policy feedback
adds something "beyond semantics". Pure python, light to import.
"""

from __future__ import annotations

from typing import Callable, Optional

from r2m.config.run import WorldConfig
from r2m.world.task import ARROW, BOS, UNK, parse_prompt

PromptView = Callable[[str], str]


def mask_prompt(prompt: str, keep: int) -> str:
    """``"<bos> 3 1 2 7 =>"`` with keep=2 -> ``"<bos> 3 1 <unk> <unk> =>"``; keep >= n leaves it unchanged.

    Refuses a prompt that is not a world prompt (:func:`r2m.world.task.parse_prompt`): a view of a foreign prompt
    would be meaningless, and the blind world only exists on world prompts."""
    if keep < 1:
        raise ValueError(f"mask_prompt keep: expected >= 1 visible digits, got {keep}")
    digits = parse_prompt(prompt)
    shown = [str(d) for d in digits[:keep]] + [UNK] * max(0, len(digits) - keep)
    return " ".join([BOS, *shown, ARROW])


class MaskedPromptView:
    """The RM's prompt view of the blind world: :func:`mask_prompt` with ``keep`` digits (picklable)."""

    def __init__(self, keep: int):
        self.keep = keep

    def __call__(self, prompt: str) -> str:
        return mask_prompt(prompt, self.keep)

    def __repr__(self) -> str:
        return f"MaskedPromptView(keep={self.keep})"


def rm_prompt_view(world: WorldConfig) -> Optional[PromptView]:
    """The view the world's RM reads prompts through: None (the whole prompt) unless ``world.rm_prompt_digits``."""
    return MaskedPromptView(world.rm_prompt_digits) if world.rm_prompt_digits > 0 else None
