"""The pair generator's exact answer likelihoods (r2m/world/likelihood.py) against the makers themselves."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from r2m.config.run import MixtureConfig, WorldConfig
from r2m.world.task import gold_reward
from r2m.world.data import make_response
from r2m.world.likelihood import (SORTED_KINDS, Response, gold_given, kind_shares, read_response,
                                  response_likelihood, sorted_likelihood)

CASES = [[3, 1, 2], [4, 4, 7, 0], [5, 5, 5], [9, 0, 9, 2, 6], [8], [2, 6]]
KINDS = MixtureConfig().kinds()


def _only(kind: str) -> dict[str, float]:
    return {k: float(k == kind) for k in KINDS}


def _lik(text: str, digits: list[int], kind: str) -> float:
    return response_likelihood(read_response(text), digits, _only(kind))


def test_every_kind_has_a_likelihood() -> None:
    assert set(SORTED_KINDS) | {"unsorted"} == set(KINDS)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "random"])
def test_likelihood_matches_the_makers_frequencies(kind: str) -> None:
    # 4000 draws of each maker: every answer it writes has the likelihood's probability (within 5 binomial SDs),
    # and the likelihoods of the answers seen add up to 1 (the maker writes nothing else).
    rng = np.random.default_rng(11)
    for digits in CASES:
        draws = Counter(" ".join(make_response(rng, digits, kind)) for _ in range(4000))
        total = 0.0
        for text, count in draws.items():
            p = _lik(text, digits, kind)
            assert p > 0, (kind, digits, text)
            assert count / 4000 == pytest.approx(p, abs=5 * (p * (1 - p) / 4000) ** 0.5 + 1e-9), (kind, digits, text)
            total += p
        assert total == pytest.approx(1.0, abs=1e-12), (kind, digits)


def test_random_answers_are_uniform_over_the_digit_strings() -> None:
    digits = [3, 1, 2]
    total = sum(_lik(" ".join(map(str, r)) + " <eos>", digits, "random") for r in itertools.product(range(10), repeat=3))
    assert total == pytest.approx(1.0, abs=1e-12)
    assert _lik("1 2 <eos>", digits, "random") == 0.0  # the wrong length


def test_likelihood_hand_worked() -> None:
    s = [1, 3, 3, 5]
    # wrong_digit: a 3 (2 of the 4 positions) replaced by 8: (2 / 4) (1 / 9) = 1/18
    assert _lik("1 3 5 8 <eos>", s, "wrong_digit") == pytest.approx(1 / 18)
    assert _lik("1 3 3 5 <eos>", s, "wrong_digit") == 0.0  # the correct answer is never a wrong digit
    assert _lik("1 5 3 8 <eos>", s, "wrong_digit") == 0.0  # unsorted
    assert _lik("1 3 <eos>", s, "truncated") == 0.5 and _lik("1 3 3 <eos>", s, "truncated") == 0.5
    assert _lik("3 1 3 5 <eos>", s, "swap") == pytest.approx(1 / 2)  # 2 spots: (1, 3) and (3, 5)
    assert _lik("1 3 3 5 5 5 <eos>", s, "repeat") == pytest.approx(1 / 3)
    assert _lik("5 5 5 <eos>", [5, 5, 5], "swap") == 1.0  # no spot: the sorted digits
    assert _lik("3 5 3 1 <eos>", [3, 5, 3, 1], "unsorted") == 1.0
    assert read_response("1 2 <pad>") == Response((), False) and _lik("1 2 <pad>", s, "correct") == 0.0
    mix = MixtureConfig(correct=1, truncated=1, swap=0, unsorted=0, random=0, repeat=0, wrong_digit=2)
    assert kind_shares(mix)["wrong_digit"] == 0.5
    # a mixture: P(r) = sum_k P(k) P(r | k)
    shares = kind_shares(mix)
    assert response_likelihood(read_response("1 3 <eos>"), s, shares) == pytest.approx(0.25 * 0.5)


def test_likelihood_rows_are_candidate_targets() -> None:
    # One call scores many candidate targets: each row as if it were alone.
    S = np.asarray([[1, 3, 3, 5], [1, 3, 5, 8], [0, 1, 3, 5]])
    r = read_response("1 3 5 8 <eos>")
    out = sorted_likelihood(r, S, _only("wrong_digit"))
    assert out.tolist() == pytest.approx([1 / 18, 0.0, 1 / 36])


def test_gold_given_matches_the_gold_reward() -> None:
    rng = np.random.default_rng(5)
    w = WorldConfig(extra_token_penalty=0.3)
    for _ in range(300):
        n = int(rng.integers(1, 7))
        targets = np.sort(rng.integers(0, 10, size=(5, n)), axis=1)
        text = " ".join(make_response(rng, targets[0].tolist(), str(rng.choice(KINDS))))
        got = gold_given(read_response(text), targets, w)
        want = [gold_reward(t.tolist(), text.split(), w.extra_token_penalty, w.missing_eos_penalty) for t in targets]
        assert got.tolist() == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="well-formed"):
        gold_given(read_response("1 2"), targets, w)
