"""The best accuracy a reward model can reach against the labels when it reads a pair through a view, exactly.

An RM that reads a view of the prompt (``world.rm_prompt_digits = k``: the first k digits, the rest ``<unk>``,
:mod:`r2m.world.view`) sees the same thing for every pair of the world that shares the visible digits, the
prompt's length and the two answers: one equivalence class of pairs. Whatever it scores, it predicts one order
for the whole class, so the best rule predicts, per class, the order with the larger summed probability over
the class's members, weighted by how often the world draws each (the Bayes rule of the view):

    q = P(label a > b | view) = sum_D w(D) p(D) / sum_D w(D),   w(D) = P(D | visible) P(a | D) P(b | D),

summed over the hidden digits D (uniform, as the world draws them), with P(r | D) the exact probability that
the pair generator writes answer r (:mod:`r2m.world.likelihood`) and p(D) the labeller's P(a > b) when the
prompt's digits are D. On a pair whose true probability is p, that rule scores p when q > 1/2, 1 - p when
q < 1/2 (1/2 on a tie), so

    view_best = (1/N) sum_pairs [p_n if q_n > 1/2 else 1 - p_n],

exact (no labels are drawn), like the labeller's ceiling (:mod:`r2m.world.ceiling`), which is the same
quantity for the full view (q = p). The rule reads both answers of a pair at once, so it bounds a pointwise RM
from above. Classes are taken over the world's distribution, not over the N pairs at hand: among a thousand
pairs almost every class holds one pair, and a rule fitted per class on the pairs themselves would see the
labeller's probability of each and match the full view. numpy.
"""

from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations_with_replacement
from typing import Any, NamedTuple, Sequence

import numpy as np

from r2m.config.run import WorldConfig
from r2m.world.data import label_probability
from r2m.world.likelihood import gold_given, kind_shares, read_response, sorted_likelihood, unsorted_likelihood
from r2m.world.task import parse_prompt

TIE = 1e-9
"""|q - 1/2| at or below this is a tie (a class whose two orders are equally likely, up to float sums)."""


@lru_cache(maxsize=None)
def hidden_multisets(h: int) -> tuple[np.ndarray, np.ndarray]:
    """Every multiset of h digits, (M, h) sorted rows, and (M,) how many digit sequences have it, h! / prod c_d!."""
    rows = list(combinations_with_replacement(range(10), h))
    orders = [math.factorial(h) // math.prod(math.factorial(ms.count(d)) for d in set(ms)) for ms in rows]
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), h), np.asarray(orders, dtype=float)


class PairView(NamedTuple):
    """One pair as the masked RM reads it: the visible digits, the prompt's length and both answers."""

    visible: tuple[int, ...]
    n: int
    a: str
    b: str


def _p_given(S: np.ndarray, view: PairView, world: WorldConfig) -> np.ndarray:
    """(M,): the labeller's P(a > b) when the prompt's sorted digits are row m of S (M, n)."""
    ra, rb = read_response(view.a), read_response(view.b)
    x = (gold_given(ra, S, world) - gold_given(rb, S, world)) / world.tau \
        + world.length_bias * (len(view.a.split()) - len(view.b.split()))
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # sigmoid(x), without overflow


def view_posterior(view: PairView, world: WorldConfig) -> float:
    """q = P(label a > b | what the view shows), summed over the hidden digits (see the module docstring).

    Every kind but ``unsorted`` reads the digits through their sorted multiset: one term per hidden multiset,
    weighted by its digit orders. ``unsorted`` (an answer copying the prompt in order) adds one term, for the
    one digit sequence it names (a != b, so no sequence is named by both)."""
    shares = kind_shares(world.mixture)
    ra, rb = read_response(view.a), read_response(view.b)
    k = len(view.visible)
    hidden, orders = hidden_multisets(view.n - k)
    S = np.sort(np.concatenate([np.broadcast_to(view.visible, (len(hidden), k)), hidden], axis=1), axis=1)  # (M, n)
    w = orders * sorted_likelihood(ra, S, shares) * sorted_likelihood(rb, S, shares)  # (M,)
    mass, weighted = w.sum(), (w * _p_given(S, view, world)).sum() if w.any() else 0.0
    for copy, other in ((ra, rb), (rb, ra)):
        if copy.well_formed and len(copy.digits) == view.n and copy.digits[:k] == view.visible:
            s = np.asarray([sorted(copy.digits)], dtype=np.int64)  # (1, n)
            w1 = unsorted_likelihood(copy, copy.digits, shares) * sorted_likelihood(other, s, shares)[0]
            mass, weighted = mass + w1, weighted + w1 * _p_given(s, view, world)[0]
    if mass <= 0:
        raise ValueError(f"view_posterior: the pair {view.a!r} / {view.b!r} is impossible under world.mixture for "
                         f"visible digits {view.visible} of {view.n}; expected a pair the world's generator writes")
    return float(weighted / mass)


def pair_view(row: dict[str, Any], keep: int) -> PairView:
    """A pair row (``prompt``, ``chosen``, ``rejected``) as the RM that reads ``keep`` prompt digits sees it."""
    digits = tuple(parse_prompt(row["prompt"]))
    return PairView(digits[:keep], len(digits), row["chosen"], row["rejected"])


def rule_accuracy(p: float, q: float) -> float:
    """Expected accuracy on a pair with P(chosen > rejected) = p of the rule that predicts chosen first when
    q > 1/2, rejected first when q < 1/2, and either (at random) on a tie (:data:`TIE`)."""
    if abs(q - 0.5) <= TIE:
        return 0.5
    return p if q > 0.5 else 1.0 - p


def view_best_accuracy(rows: Sequence[dict[str, Any]], world: WorldConfig) -> float:
    """The best expected accuracy against the labels of an RM reading ``world``'s view of each pair
    (``world.rm_prompt_digits``; 0, the whole prompt: the labeller's ceiling)."""
    if not rows:
        raise ValueError("view_best_accuracy: expected at least one pair, got none")
    keep, total = world.rm_prompt_digits, 0.0
    for row in rows:
        p = label_probability(row["gold_chosen"], row["gold_rejected"], len(row["chosen"].split()),
                              len(row["rejected"].split()), world.tau, world.length_bias)
        view = pair_view(row, keep) if keep > 0 else None
        hidden = view is not None and view.n > keep
        total += rule_accuracy(p, view_posterior(view, world) if hidden else p)
    return total / len(rows)
