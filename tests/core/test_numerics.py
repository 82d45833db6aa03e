"""The core math under the inputs bf16 and ``rl.old_logprobs=generation`` make reachable: NaN/inf at padded
positions, extreme ratios, 16-bit tensors. Masks select (a masked NaN never reaches a value or a gradient), the
token log-ratio and k3 are clamped as verl and OpenRLHF clamp them, and 16-bit inputs are computed in float32.
Random tensors with ragged masks and inexact floats; hand-worked values for the clamps."""

from __future__ import annotations

import math

import pytest
import torch

from r2m.config.enums import KLEstimator, LossAggregation
from r2m.config.enums import Algorithm
from r2m.core.advantages import AdvantageInput, AdvantageParams, compute_advantages, compute_gae
from r2m.core.losses import (
    POLICY_LOSSES,
    aggregate,
    apply_mask,
    bradley_terry_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    grebt_terms,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

B, T = 6, 7
LENGTHS = [7, 3, 5, 1, 0, 4]  # ragged, one empty row


def _mask() -> torch.Tensor:
    return (torch.arange(T) < torch.tensor(LENGTHS).unsqueeze(1)).float()  # (B, T)


def _ragged(seed: int, scale: float = 0.7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, generator=g) * scale - 0.3  # inexact floats


def _poison(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with NaN, +inf and -inf (and a huge finite value) at its masked positions."""
    junk = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])
    out = x.clone()
    where = (mask == 0).nonzero(as_tuple=True)
    out[where] = junk[torch.arange(len(where[0])) % 4]
    return out


def test_apply_mask_selects_and_keeps_weights() -> None:
    x = torch.tensor([[0.7, float("nan"), float("inf")], [-1.3, 2.1, -float("inf")]])
    m = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0]])
    torch.testing.assert_close(apply_mask(x, m), torch.tensor([[0.7, 0.0, 0.0], [-1.3 * 0.5, 2.1, 0.0]]))
    assert masked_sum(x, m).item() == pytest.approx(0.7 - 0.65 + 2.1)
    assert masked_mean(x, m).item() == pytest.approx((0.7 - 0.65 + 2.1) / 2.5)


@pytest.mark.parametrize("aggregation", list(LossAggregation))
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_garbage_at_padded_positions_changes_nothing(aggregation, level) -> None:
    """NaN/inf/1e30 in log-probs, old log-probs, advantages and ref log-probs where the mask is 0: the loss and
    every gradient equal those of the same batch with finite values there."""
    m = _mask()
    clean = dict(lp=_ragged(1, 0.3), old=_ragged(2, 0.3), adv=_ragged(3, 1.1), ref=_ragged(4, 0.3))
    results = []
    for inputs in (clean, {k: _poison(v, m) for k, v in clean.items()}):
        lp = inputs["lp"].clone().requires_grad_(True)
        out = POLICY_LOSSES[level](lp, inputs["old"], inputs["adv"], m, 0.2, aggregation, horizon=T,
                                   clip_ratio_c=3.0)
        for kind in KLEstimator:
            kl = kl_penalty(lp, inputs["ref"], kind, m)
            out = out._replace(loss=out.loss + 0.05 * aggregate(kl, m, aggregation))
        out.loss.backward()
        results.append((out.loss.detach(), out.clip_fraction, out.approx_kl, lp.grad))
    for a, b in zip(*results):
        assert torch.isfinite(b).all(), b
        torch.testing.assert_close(a, b)


def test_masked_statistics_ignore_garbage() -> None:
    m, x = _mask(), _ragged(5)
    bad = _poison(x, m)
    for fn in (masked_sum, masked_mean, masked_var):
        torch.testing.assert_close(fn(bad, m), fn(x, m))
        torch.testing.assert_close(fn(bad, m, dim=-1), fn(x, m, dim=-1))
    torch.testing.assert_close(apply_mask(masked_whiten(bad, m), m), apply_mask(masked_whiten(x, m), m))
    values, old_values, returns = _ragged(6), _ragged(7), _ragged(8)
    clean = clipped_value_loss(values, old_values, returns, m, 0.2)
    dirty = clipped_value_loss(_poison(values, m), _poison(old_values, m), _poison(returns, m), m, 0.2)
    torch.testing.assert_close(dirty.loss, clean.loss)


@pytest.mark.parametrize("estimator", list(Algorithm))
def test_advantages_ignore_garbage_in_kl_and_values(estimator) -> None:
    m = _mask()
    scores = torch.tensor([[0.7, -0.2], [1.3, 0.4], [0.1, 0.1]])  # (N=3, K=2)
    clean = AdvantageInput(scores=scores, mask=m, kl_penalty=_ragged(9, 0.05), values=_ragged(10),
                           baseline=torch.tensor([0.3, 0.9, -0.4]))
    dirty = AdvantageInput(scores=scores, mask=m, kl_penalty=_poison(clean.kl_penalty, m),
                           values=_poison(clean.values, m), baseline=clean.baseline)
    params = AdvantageParams(gamma=0.9, lam=0.7)
    a, b = compute_advantages(estimator, clean, params), compute_advantages(estimator, dirty, params)
    assert torch.isfinite(b.advantages).all() and torch.isfinite(b.returns).all()
    torch.testing.assert_close(b.advantages, a.advantages)
    torch.testing.assert_close(b.returns, a.returns)


def test_token_log_ratio_is_clamped_at_20_by_hand() -> None:
    """One token each: log π − log π_old = 25.5 (A = −0.7, unclipped wins) and 90.0 (A = 0.7, clipped wins)."""
    lp = torch.tensor([[25.5], [90.0]], requires_grad=True)
    old = torch.zeros(2, 1)
    adv = torch.tensor([-0.7, 0.7])
    out = clipped_policy_loss(lp, old, adv, torch.ones(2, 1), clip_eps=0.2, aggregation="seq_mean_token_sum")
    # row 0: max(0.7 e^20, 0.7 · 1.2) = 0.7 e^20; row 1: max(−0.7 e^20, −0.7 · 1.2) = −0.84; mean over 2 rows
    assert out.loss.item() == pytest.approx((0.7 * math.exp(20.0) - 0.84) / 2, rel=1e-6)
    out.loss.backward()
    assert torch.isfinite(lp.grad).all()  # exp(90) would be inf in float32, and 0 · inf a NaN gradient
    assert lp.grad.tolist() == [[0.0], [0.0]]  # beyond the clamp (row 0) and clipped (row 1): no gradient


def test_token_log_ratio_matches_a_loop_with_the_clamp() -> None:
    m, lp, old, adv = _mask(), _ragged(11, 9.0), _ragged(12, 9.0), _ragged(13)
    out = clipped_policy_loss(lp, old, adv, m, 0.2, "token_mean")
    total, count = 0.0, 0
    for b in range(B):
        for t in range(LENGTHS[b]):
            r = math.exp(min(max(lp[b, t].item() - old[b, t].item(), -20.0), 20.0))
            a = adv[b, t].item()
            total += max(-a * r, -a * min(max(r, 0.8), 1.2))
            count += 1
    assert out.loss.item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("d,expected", [(0.7, math.exp(-0.7) - 1 + 0.7), (-0.3, math.exp(0.3) - 1 - 0.3),
                                        (-3.0, 10.0), (-30.0, 10.0), (-1000.0, 10.0), (25.0, 10.0),
                                        (2.0, math.exp(-2.0) - 1 + 2.0)])
def test_k3_is_clamped_as_verl_by_hand(d, expected) -> None:
    """k3 = e^{−d} − 1 + d on d clamped to ±20, then clamped to [−10, 10] (d = −3: e^3 − 4 = 16.09 → 10)."""
    lp = torch.tensor([[d]], requires_grad=True)
    k3 = kl_penalty(lp, torch.zeros(1, 1), "k3")
    assert k3.item() == pytest.approx(expected, rel=1e-6)
    k3.sum().backward()
    assert torch.isfinite(lp.grad).all()


def _f32(x):
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


LOW = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", LOW)
def test_16_bit_inputs_are_computed_in_float32(dtype) -> None:
    """Each function on bf16/fp16 inputs returns float32, equal to the function on the same values in float32."""
    m = _mask()
    lp, old, adv, ref = (_ragged(s, 0.4).to(dtype) for s in (14, 15, 16, 17))
    logits = torch.randn(B, T, 11, generator=torch.Generator().manual_seed(18)).to(dtype) * 3.1
    cases = {
        "masked_mean": (masked_mean, (lp, m)), "masked_var": (masked_var, (lp, m)),
        "masked_whiten": (masked_whiten, (lp, m)), "bt": (bradley_terry_loss, (lp[:, 0], old[:, 0])),
        "k3": (lambda a, b: kl_penalty(a, b, "k3"), (lp, ref)), "k2": (lambda a, b: kl_penalty(a, b, "k2"), (lp, ref)),
        "aggregate": (lambda v, mm: aggregate(v, mm, "seq_mean_token_mean"), (lp, m)),
        "policy": (lambda *a: clipped_policy_loss(*a, 0.2).loss, (lp, old, adv, m)),
        "sequence": (lambda *a: POLICY_LOSSES["sequence"](*a, 0.2).loss, (lp, old, adv[:, 0], m)),
        "value": (lambda *a: clipped_value_loss(*a, 0.2).loss, (lp, old, adv, m)),
        "entropy": (entropy_from_logits, (logits,)),
        "grebt": (lambda r: grebt_terms(r, 0.3).loss, (lp[:, :4],)),
        "gae": (lambda *a: compute_gae(*a, 0.9, 0.7).advantages, (lp, old, m)),
    }
    for name, (fn, args) in cases.items():
        low, full = fn(*args), fn(*map(_f32, args))
        assert low.dtype == torch.float32, (name, low.dtype)
        torch.testing.assert_close(low, full, msg=name)
    scores = adv[:3, :2]
    for est in Algorithm:
        inp = AdvantageInput(scores=scores, mask=m, kl_penalty=ref * 0.01, values=old, baseline=scores[:, 0])
        out = compute_advantages(est, inp, AdvantageParams())
        assert out.advantages.dtype == out.returns.dtype == torch.float32, est
