"""The labeller's ceiling: the best accuracy any reward model can reach on a world's labelled pairs.

The labeller picks a over b with P(a > b) = p = sigmoid((g_a - g_b)/tau + lambda (len_a - len_b))
(:func:`r2m.world.data.label_probability`), independently per pair. Whatever an RM scores, it predicts one of
the two orders, which matches the label with probability p or 1 - p; the best possible rule (predicting the
labeller's more likely choice) has expected accuracy

    ceiling = (1/N) sum_pairs max(p_n, 1 - p_n),

exact, not sampled. The same probabilities give the labels' expected agreement with the gold order,
(1/N') sum_{g_a != g_b} P(label follows gold), which shows how noisy the labels are. Pure python.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

from r2m.config import WorldConfig
from r2m.world.data import label_probability


class LabellerCeiling(NamedTuple):
    """Exact expectations over a set of labelled pairs."""

    label_accuracy: float
    """mean_n max(p_n, 1 - p_n): the best expected accuracy of any RM against the labels (the ceiling)."""
    gold_agreement: float
    """mean over pairs of unequal gold of P(the label prefers the higher-gold answer); NaN if there are none."""
    n: int
    """Pairs."""


def pair_probability(row: dict[str, Any], cfg: WorldConfig) -> float:
    """P(chosen > rejected) recomputed from the row's gold rewards and lengths under ``cfg``'s labeller."""
    lc, lr = len(row["chosen"].split()), len(row["rejected"].split())
    return label_probability(row["gold_chosen"], row["gold_rejected"], lc, lr, cfg.tau, cfg.length_bias)


def labeller_ceiling(rows: Sequence[dict[str, Any]], cfg: WorldConfig) -> LabellerCeiling:
    """:class:`LabellerCeiling` of world pair rows (``chosen``, ``rejected``, ``gold_chosen``, ``gold_rejected``)."""
    if not rows:
        raise ValueError("labeller_ceiling: expected at least one pair, got none")
    best, agree, unequal = 0.0, 0.0, 0
    for row in rows:
        p = pair_probability(row, cfg)  # P(chosen > rejected)
        best += max(p, 1.0 - p)
        if row["gold_chosen"] != row["gold_rejected"]:
            unequal += 1
            agree += p if row["gold_chosen"] > row["gold_rejected"] else 1.0 - p
    return LabellerCeiling(best / len(rows), agree / unequal if unequal else float("nan"), len(rows))
