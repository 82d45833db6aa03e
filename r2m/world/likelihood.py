"""The exact probability that the world's pair generator writes a given answer, for many candidate prompts at once.

``make_response(rng, digits, kind)`` (``r2m.world.data``) draws an answer of a quality kind; here is the
probability of one answer r under the kind mixture, P(r | digits) = sum_k P(k) P(r | digits, k), written out
per kind from the makers' draws (``tests/world/test_world_likelihood.py`` checks each against the makers' own
frequencies). Every kind but ``unsorted`` reads the digits only through their sorted order s, so the
likelihood is computed for a whole array of candidate targets S (M, n) at once, one row per candidate (the
exact computations of :mod:`r2m.world.view_accuracy` enumerate every hidden-digit multiset); ``unsorted`` (the
prompt's digits in their order) is :func:`unsorted_likelihood`. numpy only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np

from r2m.config.run import MixtureConfig, WorldConfig
from r2m.world.task import EOS

Digits = tuple[int, ...]


class Response(NamedTuple):
    """An answer as the likelihoods read it."""

    digits: Digits
    """The digits before ``<eos>``."""
    well_formed: bool
    """Digits only, then exactly one ``<eos>``: the only answers the makers write."""


def read_response(text: str) -> Response:
    """``"1 3 5 <eos>"`` -> ``Response((1, 3, 5), True)``; anything the makers never write is not well formed."""
    toks = text.split()
    body = toks[:-1]
    ok = bool(body) and toks[-1] == EOS and all(len(t) == 1 and t.isdigit() for t in body)
    return Response(tuple(int(t) for t in body) if ok else (), ok)


def _rows_equal(S: np.ndarray, r: Sequence[int]) -> np.ndarray:
    """(M,) bool: row m of S (M, len(r)) equals r."""
    return (S == np.asarray(r, dtype=S.dtype)).all(axis=1)


def _correct(r: Digits, S: np.ndarray) -> np.ndarray:
    return _rows_equal(S, r).astype(float) if len(r) == S.shape[1] else np.zeros(len(S))


def _truncated(r: Digits, S: np.ndarray) -> np.ndarray:
    """drop = min(uniform{1, 2}, n - 1) digits off the end of s."""
    n, out = S.shape[1], np.zeros(len(S))
    for d in (1, 2):
        kept = n - min(d, n - 1)
        if len(r) == kept:
            out += 0.5 * _rows_equal(S[:, :kept], r)
    return out


def _swap(r: Digits, S: np.ndarray) -> np.ndarray:
    """One adjacent pair of different digits swapped, uniform over the p_s such pairs; s itself when p_s = 0."""
    n = S.shape[1]
    if len(r) != n:
        return np.zeros(len(S))
    spots = (S[:, 1:] != S[:, :-1]).sum(axis=1)  # (M,) p_s
    out = np.where(spots == 0, _rows_equal(S, r), 0.0)
    s = sorted(r)  # a swap keeps the digits: s is the only target that can give r
    diff = [i for i in range(n) if r[i] != s[i]]
    if len(diff) == 2 and diff[1] == diff[0] + 1 and r[diff[0]] == s[diff[1]] and r[diff[1]] == s[diff[0]]:
        out = out + np.where(_rows_equal(S, s) & (spots > 0), 1.0 / np.maximum(spots, 1), 0.0)
    return out


def _random(r: Digits, S: np.ndarray) -> np.ndarray:
    """n uniform digits."""
    return np.full(len(S), 10.0 ** -len(r) if len(r) == S.shape[1] else 0.0)


def _repeat(r: Digits, S: np.ndarray) -> np.ndarray:
    """s, then uniform{1, 2, 3} copies of its last digit."""
    n = S.shape[1]
    if not (1 <= len(r) - n <= 3 and all(d == r[n - 1] for d in r[n:])):
        return np.zeros(len(S))
    return _rows_equal(S, r[:n]) / 3.0


def _wrong_digit(r: Digits, S: np.ndarray) -> np.ndarray:
    """One uniform position's digit x replaced by one of the 9 others, y, then sorted: r = sorted(s - x + y),
    reached from each of the c_s(x) positions that hold x, each with probability (1/n)(1/9)."""
    n = S.shape[1]
    if len(r) != n or list(r) != sorted(r):
        return np.zeros(len(S))
    counts = digit_counts(S)  # (M, 10)
    diff = counts - np.bincount(np.asarray(r), minlength=10)  # (M, 10): +1 at x, -1 at y when one digit differs
    one = np.abs(diff).sum(axis=1) == 2
    c_x = counts[np.arange(len(S)), diff.argmax(axis=1)]  # (M,) c_s(x)
    return np.where(one, c_x / (9.0 * n), 0.0)


SORTED_KINDS: dict[str, Callable[[Digits, np.ndarray], np.ndarray]] = {
    "correct": _correct, "truncated": _truncated, "swap": _swap, "random": _random, "repeat": _repeat,
    "wrong_digit": _wrong_digit,
}
"""P(r | target s, kind) for every row s of S, for every kind but ``unsorted``."""


def digit_counts(S: np.ndarray) -> np.ndarray:
    """(M, 10): how often each digit occurs in each row of S (M, n)."""
    return (S[:, :, None] == np.arange(10)).sum(axis=1)


def kind_shares(mixture: MixtureConfig) -> dict[str, float]:
    """P(kind): the mixture's weights normalised (the makers pick a kind by a uniform on the cumulative shares)."""
    total = sum(mixture.weights())
    return {k: w / total for k, w in zip(mixture.kinds(), mixture.weights())}


def sorted_likelihood(r: Response, S: np.ndarray, shares: dict[str, float]) -> np.ndarray:
    """(M,): sum over every kind but ``unsorted`` of P(k) P(r | row m of S, k); 0 for an answer never written."""
    out = np.zeros(len(S))
    if r.well_formed:
        for kind, w in shares.items():
            if w > 0 and kind != "unsorted":
                out += w * SORTED_KINDS[kind](r.digits, S)
    return out


def unsorted_likelihood(r: Response, digits: Sequence[int], shares: dict[str, float]) -> float:
    """P(unsorted) P(r | digits, unsorted): the prompt's digits copied in their order."""
    return shares.get("unsorted", 0.0) * float(r.well_formed and r.digits == tuple(digits))


def response_likelihood(r: Response, digits: Sequence[int], shares: dict[str, float]) -> float:
    """P(r | the prompt's digits) under the kind mixture ``shares`` (:func:`kind_shares`)."""
    S = np.asarray([sorted(digits)], dtype=np.int64)  # (1, n)
    return float(sorted_likelihood(r, S, shares)[0]) + unsorted_likelihood(r, digits, shares)


def gold_given(r: Response, S: np.ndarray, world: WorldConfig) -> np.ndarray:
    """(M,): :func:`r2m.world.task.gold_reward` of the well-formed answer r for each target row of S (M, n): positional
    hits / n, less ``extra_token_penalty`` per digit beyond n (r ends in ``<eos>``: no missing-eos penalty)."""
    n, m = S.shape[1], len(r.digits)
    if not r.well_formed:
        raise ValueError(f"gold_given: expected a well-formed answer (digits then <eos>), got {r!r}")
    k = min(n, m)
    hits = (S[:, :k] == np.asarray(r.digits[:k], dtype=S.dtype)).sum(axis=1)  # (M,)
    return hits / n - world.extra_token_penalty * max(0, m - n)
