"""R2M's winner/loser choice (r2m.core.pair_choice) and grebt_terms with a given pair."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from r2m.config.enums import PairChoice
from r2m.config.models import R2MConfig
from r2m.config.parsing import load_config
from r2m.core.pair_choice import PAIR_CHOICES, choose_gold, choose_pair, choose_random, choose_self, pair_seed
from r2m.core.losses import group_reward_entropy, grebt_terms

SCORES = torch.tensor([[0.7, -1.3, 2.1, 0.2],
                       [1.1, 1.1, -0.4, -0.4],   # ties: the first index wins
                       [-0.3, 0.9, 0.4, -2.2]])
GOLD = torch.tensor([[0.25, 1.0, -0.5, 0.5],
                     [0.7, 0.7, 0.7, 0.7],       # constant gold: no preference
                     [1.0, -0.25, 0.5, 0.75]])


def test_registry_covers_every_choice() -> None:
    assert set(PAIR_CHOICES) == set(PairChoice)
    assert R2MConfig().pair_choice is PairChoice.SELF
    assert load_config(None, ["reward.r2m.pair_choice=gold"]).reward.r2m.pair_choice is PairChoice.GOLD
    with pytest.raises(Exception, match="pair_choice"):
        load_config(None, ["reward.r2m.pair_choice=best"])


def test_self_is_argmax_argmin_of_the_scores() -> None:
    p = choose_self(SCORES, GOLD)
    assert p.winner.tolist() == [2, 0, 1] and p.loser.tolist() == [1, 2, 3]
    assert torch.equal(p.winner, SCORES.max(-1).indices) and torch.equal(p.loser, SCORES.min(-1).indices)


def test_gold_is_argmax_argmin_of_gold_whatever_the_scores() -> None:
    p = choose_gold(SCORES, GOLD)
    assert p.winner.tolist() == [1, 0, 0] and p.loser.tolist() == [2, 0, 1]
    q = choose_pair("gold", -SCORES, GOLD)  # the scores are not read
    assert torch.equal(q.winner, p.winner) and torch.equal(q.loser, p.loser)
    with pytest.raises(ValueError, match="pair_choice=gold"):
        choose_gold(SCORES, None)
    with pytest.raises(ValueError, match="shape"):
        choose_gold(SCORES, GOLD[:, :3])


def test_random_pairs_are_distinct_reproducible_and_cover_all_orders() -> None:
    scores = torch.zeros(3000, 3)
    p = choose_random(scores, None, torch.Generator().manual_seed(pair_seed(5, 2)))
    assert (p.winner != p.loser).all() and p.winner.min() >= 0 and p.winner.max() <= 2 and p.loser.max() <= 2
    q = choose_random(scores, None, torch.Generator().manual_seed(pair_seed(5, 2)))
    assert torch.equal(p.winner, q.winner) and torch.equal(p.loser, q.loser)
    r = choose_random(scores, None, torch.Generator().manual_seed(pair_seed(5, 3)))
    assert not torch.equal(p.winner, r.winner)  # a fresh draw each round
    counts = torch.bincount(p.winner * 3 + p.loser, minlength=9).float() / 3000  # the 6 ordered pairs
    assert counts[[0, 4, 8]].sum() == 0
    assert torch.allclose(counts[[1, 2, 3, 5, 6, 7]], torch.full((6,), 1 / 6), atol=0.03)


def test_grebt_with_a_pair_against_the_loop() -> None:
    r = SCORES.clone().requires_grad_(True)
    pair = choose_gold(SCORES, GOLD)
    alpha = 0.3
    terms = grebt_terms(r, alpha, pair=pair)
    gre = group_reward_entropy(SCORES)
    expected = 0.0
    for i in range(3):  # the paper's loss as a loop over groups, with the pair given
        w, l = pair.winner[i].item(), pair.loser[i].item()
        bt = math.log1p(math.exp(-(SCORES[i, w] - SCORES[i, l]).item()))  # -log sigmoid(r_w - r_l)
        expected += ((1 - alpha) * bt + alpha * gre[i].item()) / 3
    assert terms.loss.item() == pytest.approx(expected, rel=1e-6)
    # Hand-worked BT parts: group 0 r_w - r_l = -1.3 - 2.1 = -3.4, -log sigmoid(-3.4) = 3.4 + log(1 + e^-3.4)
    # = 3.432829; group 1 winner = loser: log 2 = 0.693147; group 2 r_w - r_l = -0.3 - 0.9 = -1.2: 1.463282.
    assert terms.bt.item() == pytest.approx((3.432829 + 0.693147 + 1.463282) / 3, abs=1e-5)
    terms.loss.backward()
    # Group 1 (constant gold): winner = loser, so BT gives no gradient there; only GRE's part remains.
    r2 = SCORES.clone().requires_grad_(True)
    (alpha * group_reward_entropy(r2)).mean().backward()
    torch.testing.assert_close(r.grad[1], r2.grad[1])


def test_self_pair_gives_exactly_the_default_loss_and_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g) * 0.7
    base[2, 3] = base[2, 1]  # a tie
    a, b = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    la = grebt_terms(a, 0.3).loss
    lb = grebt_terms(b, 0.3, pair=choose_self(b)).loss
    assert la.item() == lb.item()
    la.backward()
    lb.backward()
    assert torch.equal(a.grad, b.grad)


def test_grebt_refuses_bad_pair_indices() -> None:
    bad = choose_self(SCORES)._replace(winner=torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="winner"):
        grebt_terms(SCORES, 0.3, pair=bad)
