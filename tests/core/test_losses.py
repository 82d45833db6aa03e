"""Hand-worked values and invariants for r2m.core.losses."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

from r2m.config.enums import KLEstimator, LossAggregation
from r2m.core.losses import (
    GREBTLoss,
    aggregate,
    bradley_terry_loss,
    POLICY_LOSSES,
    clipped_policy_loss,
    sequence_clipped_policy_loss,
    within_group_spread,
    clipped_value_loss,
    entropy_from_logits,
    grebt_loss,
    grebt_terms,
    group_reward_entropy,
    kl_penalty,
    margin_pairwise_loss,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

LN2 = math.log(2.0)


def _t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _neg_log_sigmoid(x: float) -> float:
    """−log σ(x) in plain python, written from the definition σ(x) = 1 / (1 + e^−x)."""
    return -math.log(1.0 / (1.0 + math.exp(-x)))


# ------------------------------------------------------------------ masked reductions


def test_masked_reductions_by_hand() -> None:
    x = _t([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    m = _t([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(x, m).item() == pytest.approx(6.0)
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert torch.allclose(masked_mean(x, m, dim=-1), _t([1.5, 3.0]))
    # unbiased variance of {1, 2, 3} is 1
    assert masked_var(x, m).item() == pytest.approx(1.0)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(2.0 / 3.0)
    w = masked_whiten(x, m)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-9)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-6)
    w_noshift = masked_whiten(x, m, shift_mean=False)
    assert masked_mean(w_noshift, m).item() == pytest.approx(2.0)


def test_masked_mean_empty_mask_is_zero() -> None:
    x = torch.randn(2, 3, requires_grad=True)
    m = torch.zeros(2, 3)
    out = masked_mean(x, m)
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(x.grad).all()
    assert masked_var(x, m).item() == 0.0
    assert torch.equal(masked_mean(x, m, dim=-1), torch.zeros(2))


# ------------------------------------------------------------------ reward-model losses


def test_bradley_terry() -> None:
    z = torch.zeros(4)
    assert bradley_terry_loss(z, z).item() == pytest.approx(LN2)
    # chosen − rejected = (2, −1): −log σ(2) = 0.12693, −log σ(−1) = 1.31326
    hand = (0.1269280110429725 + 1.3132616875182228) / 2
    assert hand == pytest.approx((_neg_log_sigmoid(2.0) + _neg_log_sigmoid(-1.0)) / 2)
    loss = bradley_terry_loss(_t([3.0, 0.0]), _t([1.0, 1.0]))
    assert loss.item() == pytest.approx(hand)


def test_margin_hinge() -> None:
    chosen = _t([2.0, 1.0, 0.0])
    rejected = _t([0.0, 0.5, 1.0])  # differences 2, 0.5, −1
    # margin 1: max(0, 1−2)=0 (out of margin), 1−0.5=0.5, 1+1=2
    assert margin_pairwise_loss(chosen, rejected, 1.0).item() == pytest.approx((0.0 + 0.5 + 2.0) / 3)
    # per-pair margins (3, 0, 0): 1, 0, 1
    loss = margin_pairwise_loss(chosen, rejected, _t([3.0, 0.0, 0.0]))
    assert loss.item() == pytest.approx(2.0 / 3)
    assert margin_pairwise_loss(_t([5.0]), _t([0.0]), 1.0).item() == 0.0


def test_group_reward_entropy_k2() -> None:
    # z = (−1, 1); p = softmax = (e^−1, e^1)/(e^−1 + e^1) = (0.1192, 0.8808)
    p1 = math.exp(-1) / (math.exp(-1) + math.exp(1))
    p2 = 1 - p1
    hand = -(p1 * math.log(p1) + p2 * math.log(p2))
    assert p1 == pytest.approx(0.1192, abs=1e-4)
    assert hand == pytest.approx(0.3653, abs=1e-4)
    h = group_reward_entropy(_t([[0.0, 1.0]]))
    assert h.shape == (1,)
    assert h.item() == pytest.approx(hand, abs=1e-5)


def test_group_reward_entropy_uniform_is_log_k() -> None:
    r = torch.full((3, 5), 0.7, requires_grad=True)
    h = group_reward_entropy(r)
    assert torch.allclose(h, torch.full((3,), math.log(5)), atol=1e-6)
    h.sum().backward()
    assert torch.isfinite(r.grad).all()
    # scale/shift invariant (up to eps)
    r2 = torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(group_reward_entropy(r2), group_reward_entropy(5 * r2 - 2), atol=1e-5)


class _HandGroup(NamedTuple):
    bt: float
    gre: float


def _hand_grebt_row(row: list[float]) -> _HandGroup:
    """Plain-python BT and GRE of one group."""
    k = len(row)
    bt = _neg_log_sigmoid(max(row) - min(row))
    mean = sum(row) / k
    std = math.sqrt(sum((r - mean) ** 2 for r in row) / k)
    z = [(r - mean) / (std + 1e-6) for r in row]
    norm = sum(math.exp(v) for v in z)
    p = [math.exp(v) / norm for v in z]
    gre = -sum(q * math.log(q) for q in p)
    return _HandGroup(bt=bt, gre=gre)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_grebt_by_hand(alpha: float) -> None:
    rows = [[1.0, 2.0, 4.0], [0.5, 0.5, -0.5]]
    parts = [_hand_grebt_row(r) for r in rows]
    # row 1: winner 4, loser 1, d = 3; row 2: winner 0.5, loser −0.5, d = 1
    assert parts[0].bt == pytest.approx(0.04858735157374206)  # −log σ(3)
    assert parts[1].bt == pytest.approx(0.31326168751822286)  # −log σ(1)
    hand_bt = (parts[0].bt + parts[1].bt) / 2
    hand_gre = (parts[0].gre + parts[1].gre) / 2
    hand = (1 - alpha) * hand_bt + alpha * hand_gre
    out = grebt_terms(_t(rows), alpha)
    assert isinstance(out, GREBTLoss)
    assert out.loss.item() == pytest.approx(hand, abs=1e-9)
    assert out.bt.item() == pytest.approx(hand_bt, abs=1e-9)
    assert out.gre.item() == pytest.approx(hand_gre, abs=1e-9)
    assert grebt_loss(_t(rows), alpha).item() == pytest.approx(hand, abs=1e-9)


def test_grebt_gradient_flows_to_winner_and_loser() -> None:
    r = _t([[1.0, 2.0, 4.0], [0.0, 3.0, 1.0]]).requires_grad_(True)
    grebt_loss(r, 0.0).backward()
    # pure BT: d/dr_w = −σ(−d)/N, d/dr_l = +σ(−d)/N, nothing for the middle sample
    s1 = 1 / (1 + math.exp(3.0)) / 2
    expected = _t([[s1, 0.0, -s1], [s1, -s1, 0.0]])
    assert torch.allclose(r.grad, expected)
    r.grad = None
    grebt_loss(r, 0.5).backward()
    assert (r.grad[:, 1].abs() > 0).any()  # the entropy reaches the non-extreme samples too
    assert torch.isfinite(r.grad).all()


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_grebt_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        grebt_loss(torch.zeros(2, 3), alpha)


def test_grebt_needs_k_at_least_2() -> None:
    with pytest.raises(ValueError):
        grebt_loss(torch.zeros(2, 1), 0.5)


# ------------------------------------------------------------------ KL


def test_kl_estimators_by_hand() -> None:
    logp = _t([[math.log(0.5), math.log(0.25)]])
    ref = _t([[math.log(0.25), math.log(0.5)]])  # d = (ln 2, −ln 2)
    assert torch.allclose(kl_penalty(logp, ref, KLEstimator.K1), _t([[LN2, -LN2]]))
    assert torch.allclose(kl_penalty(logp, ref, "k2"), _t([[0.5 * LN2**2, 0.5 * LN2**2]]))
    # k3: e^−ln2 − 1 + ln2 = 0.5 − 1 + ln2; e^ln2 − 1 − ln2 = 1 − ln2
    k3 = kl_penalty(logp, ref, "k3")
    assert torch.allclose(k3, _t([[LN2 - 0.5, 1 - LN2]]))
    rand = kl_penalty(torch.randn(4, 7), torch.randn(4, 7), KLEstimator.K3)
    assert (rand >= 0).all()
    same = torch.randn(3, 5)
    for kind in KLEstimator:
        assert torch.equal(kl_penalty(same, same, kind), torch.zeros(3, 5))
    with pytest.raises(ValueError):
        kl_penalty(same, same, "k4")


# ------------------------------------------------------------------ aggregation


def test_aggregations_by_hand() -> None:
    v = _t([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 99.0, 99.0]])
    m = _t([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert aggregate(v, m, LossAggregation.TOKEN_MEAN).item() == pytest.approx(21 / 6)
    assert aggregate(v, m, "seq_mean_token_sum").item() == pytest.approx((10 + 11) / 2)
    assert aggregate(v, m, "seq_mean_token_mean").item() == pytest.approx((2.5 + 5.5) / 2)
    # explicit global normalisers
    assert aggregate(v, m, "token_mean", num_tokens=12).item() == pytest.approx(21 / 12)
    assert aggregate(v, m, "seq_mean_token_sum", num_seqs=4).item() == pytest.approx(21 / 4)
    assert aggregate(v, m, "seq_mean_token_mean", num_seqs=4).item() == pytest.approx(8 / 4)
    # Dr. GRPO's constant normaliser: token sums over N_seq * T_max (T_max the mask width or ``horizon``)
    assert aggregate(v, m, "seq_mean_token_sum_norm").item() == pytest.approx((10 + 11) / (2 * 4))
    assert aggregate(v, m, "seq_mean_token_sum_norm", num_seqs=4, horizon=10).item() == pytest.approx(21 / 40)
    # an empty row counts as a sequence with mean 0, and an all-empty mask gives 0
    m_empty_row = _t([[1, 1, 1, 1], [0, 0, 0, 0]])
    assert aggregate(v, m_empty_row, "seq_mean_token_mean").item() == pytest.approx(2.5 / 2)
    assert aggregate(v, torch.zeros_like(m), "token_mean").item() == 0.0
    with pytest.raises(ValueError):
        aggregate(v, m, "bogus")


# ------------------------------------------------------------------ PPO losses


class _PolicyInputs(NamedTuple):
    logp: torch.Tensor
    old: torch.Tensor
    mask: torch.Tensor


def _policy_inputs(ratios: list[float]) -> _PolicyInputs:
    """One sequence whose token ratios π/π_old are exactly ``ratios``."""
    old = torch.zeros(1, len(ratios), dtype=torch.float64)  # (1, T)
    logp = _t([[math.log(r) for r in ratios]]).requires_grad_(True)  # (1, T)
    return _PolicyInputs(logp=logp, old=old, mask=torch.ones_like(old))


def test_clipped_policy_loss_positive_advantage() -> None:
    ratios = [1.1, 1.5, 0.5]
    logp, old, mask = _policy_inputs(ratios)
    out = clipped_policy_loss(logp, old, _t([1.0]), mask, clip_eps=0.2)
    # A = +1: in range −1.1; above 1+ε clipped to −1.2; below 1−ε the unclipped −0.5 is larger
    assert out.loss.item() == pytest.approx((-1.1 - 1.2 - 0.5) / 3)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)
    hand_kl = sum(0.5 * math.log(r) ** 2 for r in ratios) / 3
    assert out.approx_kl.item() == pytest.approx(hand_kl)
    assert not out.clip_fraction.requires_grad and not out.approx_kl.requires_grad
    out.loss.backward()
    # d(−A ρ)/d log π = −A ρ / 3 where unclipped, 0 where clipped
    assert torch.allclose(logp.grad, _t([[-1.1 / 3, 0.0, -0.5 / 3]]))


def test_clipped_policy_loss_negative_advantage() -> None:
    logp, old, mask = _policy_inputs([1.1, 1.5, 0.5])
    out = clipped_policy_loss(logp, old, _t([[-1.0, -1.0, -1.0]]), mask, clip_eps=0.2)
    # A = −1: in range 1.1; above 1+ε the unclipped 1.5 is larger; below 1−ε clipped to 0.8
    assert out.loss.item() == pytest.approx((1.1 + 1.5 + 0.8) / 3)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)


def test_clipped_policy_loss_in_range_equals_surrogate() -> None:
    logp = torch.randn(3, 4, dtype=torch.float64) * 0.01
    old = torch.zeros_like(logp)
    adv = torch.randn(3, dtype=torch.float64)
    mask = torch.ones_like(logp)
    out = clipped_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    hand = (-adv[:, None] * logp.exp()).mean()
    assert out.loss.item() == pytest.approx(hand.item())
    assert out.clip_fraction.item() == 0.0


@pytest.mark.parametrize("aggregation", list(LossAggregation))
def test_split_batch_matches_full_batch(aggregation: LossAggregation) -> None:
    gen = torch.Generator().manual_seed(0)
    b, t = 8, 6
    logp = (0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)).requires_grad_(True)
    old = 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([1, 6, 3, 2, 5, 6, 4, 2])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)  # right padding

    full = clipped_policy_loss(logp, old, adv, mask, 0.2, aggregation).loss
    (full_grad,) = torch.autograd.grad(full, logp)

    num_tokens, num_seqs = mask.sum(), b
    total = torch.zeros((), dtype=torch.float64)
    for part in (slice(0, 3), slice(3, 8)):  # uneven split on purpose
        total = total + clipped_policy_loss(
            logp[part], old[part], adv[part], mask[part], 0.2, aggregation, num_tokens, num_seqs
        ).loss
    (split_grad,) = torch.autograd.grad(total, logp)
    assert total.item() == pytest.approx(full.item(), abs=1e-12)
    assert torch.allclose(split_grad, full_grad, atol=1e-12)


def test_clipped_value_loss_by_hand() -> None:
    values = _t([[1.0, 3.0, 2.0]])
    old = _t([[1.0, 1.0, 1.0]])
    returns = _t([[2.0, 2.0, 2.2]])
    mask = torch.ones_like(values)
    out = clipped_value_loss(values, old, returns, mask, clip_eps=0.5)
    # t0: both errors 1 → 0.5; t1: v_clip = 1.5, max(1, 0.25) → 0.5;
    # t2: v_clip = 1.5, max(0.04, 0.49) → 0.245 (clipped wins)
    assert out.loss.item() == pytest.approx((0.5 + 0.5 + 0.245) / 3)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)
    seq_sum = clipped_value_loss(values, old, returns, mask, 0.5, "seq_mean_token_sum")
    assert seq_sum.loss.item() == pytest.approx(1.245)


def test_entropy_from_logits() -> None:
    logits = torch.zeros(2, 3, 7)
    assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(7)))
    # huge logits stay finite; masked (−inf) vocab entries contribute nothing
    big = torch.tensor([[[1e4, 1e4, float("-inf")]]], requires_grad=True)
    h = entropy_from_logits(big)
    assert h.item() == pytest.approx(LN2, abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(big.grad).all()
    # matches the definition on random logits
    x = torch.randn(4, 5, 9, dtype=torch.float64)
    p = torch.softmax(x, -1)
    assert torch.allclose(entropy_from_logits(x), -(p * p.log()).sum(-1))


def test_clip_higher_by_hand() -> None:
    logp, old, mask = _policy_inputs([1.1, 1.25, 1.5, 0.7])
    out = clipped_policy_loss(logp, old, _t([0.7]), mask, clip_eps=0.2, clip_eps_high=0.28)
    # A = 0.7, bounds [0.8, 1.28]: 1.1 and 1.25 in range, 1.5 clipped to 1.28, 0.7 below (unclipped wins)
    assert out.loss.item() == pytest.approx(-0.7 * (1.1 + 1.25 + 1.28 + 0.7) / 4)
    assert out.clip_fraction.item() == pytest.approx(1 / 4)
    # without clip_eps_high the upper bound is 1 + clip_eps = 1.2
    same = clipped_policy_loss(logp, old, _t([0.7]), mask, clip_eps=0.2)
    assert same.loss.item() == pytest.approx(-0.7 * (1.1 + 1.2 + 1.2 + 0.7) / 4)


def test_dual_clip_caps_negative_advantages_by_hand() -> None:
    logp, old, mask = _policy_inputs([1.1, 2.5, 4.0, 0.7])
    adv = _t([[-0.7, -0.7, -0.7, 0.7]])
    out = clipped_policy_loss(logp, old, adv, mask, clip_eps=0.2, clip_ratio_c=3.0)
    # A < 0: max(-A ρ, -A clip) = 0.7·ρ for ρ > 1.2, capped at 0.7·3 = 2.1; the A > 0 token (ρ = 0.7,
    # below the range: the unclipped -0.49 wins) is untouched
    assert out.loss.item() == pytest.approx((0.7 * 1.1 + 0.7 * 2.5 + 2.1 - 0.7 * 0.7) / 4)
    plain = clipped_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    assert plain.loss.item() == pytest.approx((0.7 * 1.1 + 0.7 * 2.5 + 0.7 * 4.0 - 0.7 * 0.7) / 4)
    out.loss.backward()
    assert logp.grad[0, 2].item() == 0.0  # the capped token has no gradient


def _sequence_loss_loop(logp, old, adv, mask, eps, eps_high, c) -> float:
    """R2M Eq. 2 written out: per sequence, ρ = Π_t π/π_old over its tokens, clipped; mean over sequences."""
    total = 0.0
    for i in range(logp.shape[0]):
        log_rho = sum((logp[i, t] - old[i, t]).item() for t in range(logp.shape[1]) if mask[i, t] > 0)
        rho = math.exp(log_rho)
        a = adv[i].item()
        loss = max(-a * rho, -a * min(max(rho, 1 - eps), 1 + eps_high))
        if c is not None and a < 0:
            loss = min(loss, -a * c)
        total += loss
    return total / logp.shape[0]


@pytest.mark.parametrize("c", [None, 3.0])
def test_sequence_ratio_matches_the_paper_loop(c) -> None:
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 2, 4, 1, 3])
    mask = (torch.arange(5)[None] < lengths[:, None]).double()  # (5, 5) ragged
    logp = (torch.randn(5, 5, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    old = torch.randn(5, 5, generator=g, dtype=torch.float64) * 0.3
    adv = _t([0.7, -1.3, 0.2, -0.4, 2.1])
    out = sequence_clipped_policy_loss(logp, old, adv[:, None] * mask, mask, clip_eps=0.2, clip_eps_high=0.3,
                                       clip_ratio_c=c)
    assert out.loss.item() == pytest.approx(_sequence_loss_loop(logp, old, adv, mask, 0.2, 0.3, c), rel=1e-12)
    # padded positions hold garbage log-probs: they must not enter the ratio
    garbage = torch.where(mask.bool(), logp.detach(), torch.full_like(old, 9.0))
    again = sequence_clipped_policy_loss(garbage, old, adv, mask, clip_eps=0.2, clip_eps_high=0.3, clip_ratio_c=c)
    assert again.loss.item() == pytest.approx(out.loss.item(), rel=1e-12)
    out.loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[~mask.bool()].abs().sum() == 0


def test_sequence_ratio_differs_from_token_ratio_and_stays_finite() -> None:
    # ratios 1.1 and 1.15 per token: every token is in range, but the sequence ratio 1.265 is clipped
    logp, old, mask = _policy_inputs([1.1, 1.15])
    tok = POLICY_LOSSES["token"](logp, old, _t([0.7]), mask, 0.2)
    seq = POLICY_LOSSES["sequence"](logp, old, _t([0.7]), mask, 0.2)
    assert tok.loss.item() == pytest.approx(-0.7 * (1.1 + 1.15) / 2) and tok.clip_fraction.item() == 0
    assert seq.loss.item() == pytest.approx(-0.7 * 1.2) and seq.clip_fraction.item() == 1.0
    # a huge sequence log-ratio gives a finite loss and gradient (capped before exp)
    big = _t([[60.0, 60.0]]).requires_grad_(True)
    huge = sequence_clipped_policy_loss(big, old, _t([-0.7]), mask, 0.2, clip_ratio_c=3.0)
    huge.loss.backward()
    assert huge.loss.item() == pytest.approx(2.1) and torch.isfinite(big.grad).all()


def test_within_group_spread_by_hand() -> None:
    # groups (1, 3) and (0.7, 0.7, ...) in K = 2: population stds 1 and 0
    assert within_group_spread(_t([1.0, 3.0, 0.7, 0.7]), 2).item() == pytest.approx(0.5)
