"""Pairwise accuracy of a reward model on held-out preference pairs, with or without policy feedback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from r2m.models.feedback import text_feedback
from r2m.models.reward import DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class RMAccuracy:
    accuracy: float
    """Share of pairs where r(chosen) > r(rejected) (ties count half): agreement with the labels."""
    gold_accuracy: float
    """Share of pairs with distinct gold rewards ordered as gold orders them (NaN without gold)."""
    n: int
    """Pairs scored."""
    equal_length_accuracy: float = float("nan")
    """``accuracy`` on the pairs whose two answers have the same length in words (NaN: none, or rows without
    ``chosen``/``rejected``). A length-biased RM cannot lean on length here (SER Table 1, issue 14 item 6)."""
    unequal_length_accuracy: float = float("nan")
    """``accuracy`` on the pairs whose answers differ in length (NaN: none)."""
    n_equal_length: int = 0
    """Pairs of equal length (the rest, ``n - n_equal_length``, are unequal)."""


def pairwise_wins(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where a > b, 0.5 on ties, 0 otherwise."""
    return (a > b).float() + 0.5 * (a == b).float()


def _subset_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return x[mask].mean().item() if mask.any() else float("nan")


def equal_length_mask(rows: Sequence[dict]) -> Optional[torch.Tensor]:
    """(N,) bool: the pair's chosen and rejected answers have the same number of words (the world's length,
    as ``r2m.world.data`` counts it); None when the rows carry no answer texts."""
    if not rows or "chosen" not in rows[0] or "rejected" not in rows[0]:
        return None
    return torch.tensor([len(r["chosen"].split()) == len(r["rejected"].split()) for r in rows])


def accuracy_from_scores(s_chosen: torch.Tensor, s_rejected: torch.Tensor, rows: Sequence[dict]) -> RMAccuracy:
    """Accuracy of scores (N,) of the chosen and rejected answers of ``rows``: against the labels, against gold
    where the rows carry it, and split by equal vs unequal answer length where they carry the texts."""
    wins = pairwise_wins(s_chosen, s_rejected)  # (N,)
    acc = wins.mean().item()
    gold_acc = float("nan")
    if rows and "gold_chosen" in rows[0]:
        g_c = torch.tensor([r["gold_chosen"] for r in rows])
        g_r = torch.tensor([r["gold_rejected"] for r in rows])
        distinct = g_c != g_r
        if distinct.any():
            # Orient each pair by gold, then ask whether the RM agrees.
            agree = torch.where(g_c > g_r, wins, pairwise_wins(s_rejected, s_chosen))
            gold_acc = agree[distinct].mean().item()
    equal = equal_length_mask(rows)
    split = {} if equal is None else {"equal_length_accuracy": _subset_mean(wins, equal),
                                      "unequal_length_accuracy": _subset_mean(wins, ~equal),
                                      "n_equal_length": int(equal.sum())}
    return RMAccuracy(accuracy=acc, gold_accuracy=gold_acc, n=len(rows), **split)


@torch.no_grad()
def pairwise_accuracy(rm, rows: Sequence[dict], batch_size: int = DEFAULT_BATCH_SIZE) -> RMAccuracy:
    """Accuracy of a plain :class:`r2m.models.reward.RewardModel`."""
    prompts = [r["prompt"] for r in rows]
    s_c = rm.score_texts(prompts, [r["chosen"] for r in rows], batch_size)  # (N,)
    s_r = rm.score_texts(prompts, [r["rejected"] for r in rows], batch_size)  # (N,)
    return accuracy_from_scores(s_c.cpu(), s_r.cpu(), rows)


@torch.no_grad()
def feedback_pairwise_accuracy(model, policy, policy_tokenizer, rows: Sequence[dict], w: float,
                               device: torch.device, batch_size: int = DEFAULT_BATCH_SIZE) -> RMAccuracy:
    """Accuracy of an R2M reward model with h from ``policy`` (R2M paper Appendix G.6, Table 3).

    Chosen and rejected are each passed through the policy's backbone for their last-layer states
    (:func:`r2m.models.feedback.text_feedback`: no logits), ``batch_size`` rows at a time, as through the RM;
    the RTE weight is ω = ``w`` (the paper uses t = T, i.e. ω(T) = Ω).
    """
    def scores(key: str) -> torch.Tensor:
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i: i + batch_size]
            prompts, responses = [r["prompt"] for r in chunk], [r[key] for r in chunk]
            rte = model.embed_texts(prompts, responses, batch_size)  # (b, D_m)
            h = text_feedback(policy, policy_tokenizer, prompts, responses, device)  # (b, S-1, D_p)
            out.append(model.score_embeddings(rte, h.hidden, h.mask, w).cpu())
        return torch.cat(out)

    return accuracy_from_scores(scores("chosen"), scores("rejected"), rows)


@torch.no_grad()
def vanilla_pairwise_accuracy(model, rows: Sequence[dict], batch_size: int = DEFAULT_BATCH_SIZE) -> RMAccuracy:
    """Accuracy of the unmodified RM inside an R2M model (its frozen original head)."""
    prompts = [r["prompt"] for r in rows]
    s_c = model.vanilla_score(model.embed_texts(prompts, [r["chosen"] for r in rows], batch_size))
    s_r = model.vanilla_score(model.embed_texts(prompts, [r["rejected"] for r in rows], batch_size))
    return accuracy_from_scores(s_c.cpu(), s_r.cpu(), rows)
