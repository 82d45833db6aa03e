"""R2M's fusion: ω(t), the cross-attention's shapes, masking and initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from r2m.models.fusion import PolicyFeedbackFusion, omega


def test_omega_schedule() -> None:
    assert omega(0, 100, 0.0) == 1.0
    assert omega(50, 100, 0.0) == pytest.approx(0.5)
    assert omega(100, 100, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert omega(25, 100, 0.0) == pytest.approx(0.5 * math.cos(math.pi / 4) + 0.5)
    # The floor Omega: omega never falls below it, and above it the cosine is untouched.
    assert omega(100, 100, 0.6) == 0.6 and omega(90, 100, 0.6) == 0.6
    assert omega(10, 100, 0.6) == pytest.approx(0.5 * math.cos(math.pi * 0.1) + 0.5)
    assert omega(150, 100, 0.2) == 0.2  # past T it stays at the floor
    with pytest.raises(ValueError, match="total_steps"):
        omega(1, 0, 0.5)


def test_shapes_with_different_widths() -> None:
    torch.manual_seed(0)
    f = PolicyFeedbackFusion(rm_dim=24, policy_dim=40, inner_dim=16, num_heads=4)
    out = f(torch.randn(3, 24), torch.randn(3, 7, 40), torch.ones(3, 7))
    assert out.shape == (3, 24)
    assert f.w_q.weight.shape == (16, 24) and f.w_k.weight.shape == (16, 40) and f.w_o.weight.shape == (24, 16)


def test_single_head_is_eq3_by_hand() -> None:
    torch.manual_seed(0)
    f = PolicyFeedbackFusion(rm_dim=5, policy_dim=6, inner_dim=4)
    rte, h = torch.randn(1, 5), torch.randn(1, 3, 6)
    q, k, v = rte @ f.w_q.weight.T, h[0] @ f.w_k.weight.T, h[0] @ f.w_v.weight.T
    expected = torch.softmax(q @ k.T / math.sqrt(4), dim=-1) @ v @ f.w_o.weight.T
    torch.testing.assert_close(f(rte, h, torch.ones(1, 3)), expected)


def test_padded_positions_change_nothing() -> None:
    torch.manual_seed(0)
    f = PolicyFeedbackFusion(rm_dim=8, policy_dim=12, inner_dim=8, num_heads=2)
    rte, h = torch.randn(2, 8), torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    base = f(rte, h, mask)
    noisy = h.clone()
    noisy[0, 3:] = 1e3 * torch.randn(2, 12)  # right padding of row 0
    noisy[1, 0] = -1e3  # left padding of row 1
    torch.testing.assert_close(f(rte, noisy, mask), base)
    # ... and equals the computation on the unpadded rows alone.
    torch.testing.assert_close(f(rte[:1], h[:1, :3], torch.ones(1, 3)), base[:1])
    torch.testing.assert_close(f(rte[1:], h[1:, 1:], torch.ones(1, 4)), base[1:])


def test_fully_masked_row_gives_zero_feedback() -> None:
    f = PolicyFeedbackFusion(rm_dim=4, policy_dim=4, inner_dim=4)
    out = f(torch.randn(1, 4), torch.randn(1, 3, 4), torch.zeros(1, 3))
    assert torch.equal(out, torch.zeros(1, 4))


def test_zero_init_outputs_zero() -> None:
    f = PolicyFeedbackFusion(rm_dim=6, policy_dim=9, inner_dim=4, init="zero")
    assert torch.equal(f(torch.randn(2, 6), torch.randn(2, 3, 9), torch.ones(2, 3)), torch.zeros(2, 6))
    r = PolicyFeedbackFusion(rm_dim=6, policy_dim=9, inner_dim=4, init="random")
    assert r.w_o.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="init"):
        PolicyFeedbackFusion(6, 9, 4, init="xavier")


# ------------------------------------------------------------------ no k, no v


def _kv_fusion(f: PolicyFeedbackFusion, rte, h, mask):
    """Eq. 3 as written: k = h W_k and v = h W_v formed, (B, H, S, dh) each."""
    B, S, _ = h.shape
    H, dh = f.num_heads, f.head_dim
    q = f.w_q(rte).view(B, H, 1, dh)
    k = f.w_k(h).view(B, S, H, dh).transpose(1, 2)
    v = f.w_v(h).view(B, S, H, dh).transpose(1, 2)
    valid = mask.bool().view(B, 1, 1, S)
    scores = ((q @ k.transpose(-1, -2)) / math.sqrt(dh)).masked_fill(~valid, torch.finfo(h.dtype).min)
    attn = torch.softmax(scores, dim=-1) * valid.any(-1, keepdim=True)
    return f.w_o((attn @ v).transpose(1, 2).reshape(B, H * dh))


def _ragged_batch(B: int, S: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = 0.7 * torch.randn(B, S, D, generator=g) + 0.3
    mask = torch.zeros(B, S, dtype=torch.long)
    for i in range(B - 1):  # left padding, right padding, both; the last row has no valid position
        lo, hi = (i * 2) % 5, S - (i * 3) % 4
        mask[i, lo:hi] = 1
    return h, mask


@pytest.mark.parametrize("heads", [1, 4])
def test_fusion_equals_the_kv_formulation_in_value_and_gradient(heads) -> None:
    torch.manual_seed(0)
    f = PolicyFeedbackFusion(rm_dim=12, policy_dim=20, inner_dim=16, num_heads=heads)
    rte = 0.7 * torch.randn(6, 12)
    h, mask = _ragged_batch(6, 9, 20)
    weights = torch.randn(6, 12)
    params = list(f.parameters())
    new, old = f(rte, h, mask), _kv_fusion(f, rte, h, mask)
    torch.testing.assert_close(new, old, atol=1e-6, rtol=1e-5)
    for a, b in zip(torch.autograd.grad((new * weights).sum(), params), torch.autograd.grad((old * weights).sum(), params)):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    assert torch.equal(new[-1], torch.zeros(12))  # the row without a valid position


def test_fusion_forms_no_k_or_v() -> None:
    """Nothing of shape (B, S, d) (k, v or their gradients) in the forward or the backward: with d = 8·D_p the
    largest tensor is h-sized."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1]))
    from memory_probe import Allocations

    B, S, D_p, d = 4, 50, 8, 64
    f = PolicyFeedbackFusion(rm_dim=6, policy_dim=D_p, inner_dim=d, num_heads=2)
    h, mask = _ragged_batch(B, S, D_p)
    with Allocations() as probe:
        f(torch.randn(B, 6), h, mask).sum().backward()
    assert not probe.with_numel_at_least(B * S * d // 2), probe.with_numel_at_least(B * S * d // 2)
