"""The best accuracy through the RM's prompt view (r2m/world/view_accuracy.py): hand-worked and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from r2m.config.run import MixtureConfig, WorldConfig
from r2m.world.task import format_prompt, gold_reward
from r2m.world.ceiling import labeller_ceiling
from r2m.world.data import _pair_row, label_probability, make_response
from r2m.world.likelihood import kind_shares, read_response, response_likelihood
from r2m.world.view_accuracy import (PairView, hidden_multisets, pair_view, rule_accuracy, view_best_accuracy,
                                     view_posterior)

NONE = dict(correct=0, truncated=0, swap=0, unsorted=0, random=0, repeat=0, wrong_digit=0)
# Only correct and wrong-digit answers, half each: small enough to work by hand.
HALF = WorldConfig(tau=0.25, length_bias=0.0, rm_prompt_digits=2,
                   mixture=MixtureConfig(**{**NONE, "correct": 0.5, "wrong_digit": 0.5}))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_hidden_multisets_count_every_digit_sequence() -> None:
    rows, orders = hidden_multisets(3)
    assert len(rows) == math.comb(12, 3) and orders.sum() == 1000
    assert orders[rows.tolist().index([4, 4, 7])] == 3 and orders[rows.tolist().index([1, 2, 3])] == 6


def test_posterior_hand_worked_symmetric_pair_is_a_tie() -> None:
    # Prompt "3 1 h", the RM sees "3 1 <unk>". a = 1 3 5, b = 1 3 7. Weight of h: P(a | h) P(b | h), each answer
    # 1/2 (correct) or 1/2 * c_s(x) / 27 (wrong digit): h = 5 and h = 7: 27 each (in units of 1/4 * 1/729),
    # h = 1 and h = 3: 4 each (two positions hold the replaced digit), the 6 other h: 1 each, all with equal gold
    # (p = 1/2). h = 5 gives p = sigmoid(4/3), h = 7 its mirror: q = (27 s + 27 (1 - s) + 14 / 2) / 68 = 1/2.
    view = PairView((3, 1), 3, "1 3 5 <eos>", "1 3 7 <eos>")
    assert view_posterior(view, HALF) == pytest.approx(0.5, abs=1e-12)
    assert rule_accuracy(_sig(4 / 3), view_posterior(view, HALF)) == 0.5


def test_posterior_hand_worked_the_likelier_digits_win() -> None:
    # a = 1 3 5, b = 1 3 3. h = 5 (a correct): 27; h = 3 (b correct, a from either 3): 54; h = 1: 4; h = 0, 2, 4,
    # 6, 7, 8, 9: 1 each; total 92. The gold under each h (positional hits of a, b): h = 5: 1, 2/3 -> sigmoid(4/3);
    # h = 0, 1, 2, 3: b one hit more -> sigmoid(-4/3); h = 4, 6..9: equal -> 1/2.
    s = _sig(4 / 3)
    q = (27 * s + (1 + 4 + 1 + 54) * (1 - s) + 5 * 0.5) / 92
    view = PairView((3, 1), 3, "1 3 5 <eos>", "1 3 3 <eos>")
    assert view_posterior(view, HALF) == pytest.approx(q, abs=1e-12)
    assert q == pytest.approx(0.39548, abs=1e-5)
    # The rule predicts b first: on a pair drawn with h = 5 it is right with 1 - sigmoid(4/3), with h = 3 with
    # sigmoid(4/3); the full view gets sigmoid(4/3) on both.
    rows = [_row([3, 1, 5], "1 3 5", "1 3 3", HALF), _row([3, 1, 3], "1 3 5", "1 3 3", HALF)]
    assert view_best_accuracy(rows, HALF) == pytest.approx(((1 - s) + s) / 2, abs=1e-12)
    assert labeller_ceiling(rows, HALF).label_accuracy == pytest.approx(s, abs=1e-12)
    full = WorldConfig(**{**_fields(HALF), "rm_prompt_digits": 0})
    assert view_best_accuracy(rows, full) == pytest.approx(s, abs=1e-12)


def test_an_answer_that_copies_the_prompt_shows_the_hidden_digits() -> None:
    w = WorldConfig(tau=0.25, length_bias=0.0, rm_prompt_digits=2,
                    mixture=MixtureConfig(**{**NONE, "correct": 0.5, "unsorted": 0.5}))
    # "3 1 2" can only be the unsorted copy of the prompt 3 1 2: h = 2, so q is the full view's p.
    view = PairView((3, 1), 3, "3 1 2 <eos>", "1 2 3 <eos>")
    g_a = gold_reward([3, 1, 2], "3 1 2 <eos>".split())
    assert view_posterior(view, w) == pytest.approx(_sig((g_a - 1.0) / 0.25), abs=1e-12)
    with pytest.raises(ValueError, match="impossible"):  # neither a copy of "3 1 h" nor sorted
        view_posterior(PairView((3, 1), 3, "2 1 3 <eos>", "1 2 3 <eos>"), w)


def _fields(w: WorldConfig) -> dict:
    return {f: getattr(w, f) for f in w.__dataclass_fields__}


def _row(digits: list[int], a: str, b: str, w: WorldConfig) -> dict:
    """The pair (a, b) on ``digits`` labelled with a chosen first (the label is irrelevant: p is exact)."""
    return _pair_row(w, digits, ("x", (a + " <eos>").split()), ("y", (b + " <eos>").split()), 0.0)


def _brute_posterior(view: PairView, w: WorldConfig) -> float:
    """q by enumerating every hidden digit sequence, with P(answer | digits) from the one-target likelihood."""
    shares = kind_shares(w.mixture)
    ra, rb = read_response(view.a), read_response(view.b)
    mass = weighted = 0.0
    for hidden in itertools.product(range(10), repeat=view.n - len(view.visible)):
        digits = [*view.visible, *hidden]
        m = response_likelihood(ra, digits, shares) * response_likelihood(rb, digits, shares)
        if m:
            ta, tb = view.a.split(), view.b.split()
            p = label_probability(gold_reward(digits, ta), gold_reward(digits, tb), len(ta), len(tb), w.tau,
                                  w.length_bias)
            mass, weighted = mass + m, weighted + m * p
    return weighted / mass


def test_posterior_matches_brute_force_over_digit_sequences() -> None:
    # Every kind, prompts of 3-5 digits with 1-3 hidden: the multiset sums equal the sum over sequences.
    w = WorldConfig(tau=0.3, length_bias=0.4, rm_prompt_digits=2, mixture=MixtureConfig(wrong_digit=0.3))
    rng = np.random.default_rng(3)
    kinds, checked = w.mixture.kinds(), 0
    while checked < 30:
        digits = rng.integers(0, 10, size=int(rng.integers(3, 6))).tolist()
        a, b = (" ".join(make_response(rng, digits, str(rng.choice(kinds)))) for _ in range(2))
        if a == b:
            continue
        view = pair_view({"prompt": format_prompt(digits), "chosen": a, "rejected": b}, 2)
        assert view_posterior(view, w) == pytest.approx(_brute_posterior(view, w), abs=1e-12), view
        checked += 1


def test_view_best_accuracy_refuses_no_pairs() -> None:
    with pytest.raises(ValueError, match="at least one pair"):
        view_best_accuracy([], HALF)
