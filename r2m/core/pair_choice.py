"""Which member of each group R2M's BT term treats as winner and loser (issue 14, item 2).

R2M's GREBT update (Eq. 5-7) takes, in each group i of K rollouts, the winner w_i = argmax_j r'_ij and the loser
l_i = argmin_j r'_ij of the RM's own scores. The benchmark's controls replace that choice and keep the rest:

* ``self``   -- the paper: (argmax_j r'_ij, argmin_j r'_ij);
* ``gold``   -- positive control ("oracle GREBT"): (argmax_j g_ij, argmin_j g_ij) of the world's gold reward;
* ``random`` -- negative control: two distinct members drawn uniformly from the group.

Each rule is a pure function ``(scores (n, K), gold (n, K) | None, generator) -> WinnerLoser`` in
:data:`PAIR_CHOICES`, keyed by :class:`r2m.config.enums.PairChoice`. Ties go to the first index (torch's max/min),
so ``self`` selects exactly the elements that ``rewards.max(-1)`` / ``rewards.min(-1)`` do.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from r2m.config.enums import PairChoice


class WinnerLoser(NamedTuple):
    """Per-group indices into the K members."""

    winner: torch.Tensor
    """(n,) long: the index treated as the preferred response of each group."""
    loser: torch.Tensor
    """(n,) long: the index treated as the rejected one."""


PairRule = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Generator]], WinnerLoser]


def _check_groups(scores: torch.Tensor) -> None:
    if scores.dim() != 2 or scores.shape[-1] < 2:
        raise ValueError(f"pair choice: scores must be (n, K) with K >= 2, got shape {tuple(scores.shape)}")


def choose_self(scores: torch.Tensor, gold: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> WinnerLoser:
    """The paper's choice: the RM's own best and worst of each group (gold and generator unused)."""
    _check_groups(scores)
    s = scores.detach()
    return WinnerLoser(s.max(dim=-1).indices, s.min(dim=-1).indices)  # (n,), (n,)


def choose_gold(scores: torch.Tensor, gold: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> WinnerLoser:
    """Oracle GREBT: the gold reward's best and worst of each group. A group whose gold is constant has no
    gold preference: its winner and loser are then both index 0, which makes L_BT = log 2 with zero gradient
    (r_w - r_l = 0 for the same element), so that group teaches nothing through BT."""
    _check_groups(scores)
    if gold is None:
        raise ValueError("reward.r2m.pair_choice=gold: the experience has no gold reward (world prompts only)")
    if gold.shape != scores.shape:
        raise ValueError(f"pair choice gold: expected gold of the scores' shape {tuple(scores.shape)}, "
                         f"got {tuple(gold.shape)}")
    g = gold.detach().to(scores.device)
    w, l = g.max(dim=-1).indices, g.min(dim=-1).indices  # (n,), (n,)
    flat = g.max(dim=-1).values == g.min(dim=-1).values  # (n,) constant groups
    zero = torch.zeros_like(w)
    return WinnerLoser(torch.where(flat, zero, w), torch.where(flat, zero, l))


def choose_random(scores: torch.Tensor, gold: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None) -> WinnerLoser:
    """Negative control: winner uniform over K, loser uniform over the other K - 1 members."""
    _check_groups(scores)
    n, k = scores.shape
    w = torch.randint(0, k, (n,), generator=generator)  # (n,)
    l = (w + torch.randint(1, k, (n,), generator=generator)) % k  # (n,) never equal to w
    return WinnerLoser(w.to(scores.device), l.to(scores.device))


PAIR_CHOICES: dict[PairChoice, PairRule] = {
    PairChoice.SELF: choose_self,
    PairChoice.GOLD: choose_gold,
    PairChoice.RANDOM: choose_random,
}


def choose_pair(choice: PairChoice, scores: torch.Tensor, gold: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> WinnerLoser:
    """The rule of ``choice`` applied to (scores, gold, generator)."""
    return PAIR_CHOICES[PairChoice(choice)](scores, gold, generator)


def pair_seed(seed: int, step: int) -> int:
    """The seed of round ``step``'s random pairs: a fresh draw per round from (run.seed, step), touching no global
    RNG stream (so the control leaves sampling unchanged, and a resumed run draws the same pairs)."""
    return (seed * 1_000_033 + step * 7_927 + 29) % (2**63 - 1)
