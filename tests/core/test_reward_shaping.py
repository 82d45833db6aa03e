"""Reward shaping: SER's centred sigmoid, running moments over batches, normalisation and clipping."""

from __future__ import annotations

import math

import pytest
import torch

from r2m.core.reward_shaping import RewardScaling, RunningMoments, normalize_rewards, scale_rewards


def test_sigmoid_centered_by_hand() -> None:
    scores = torch.tensor([0.0, 2.0, -2.0, 50.0, -50.0])
    out = scale_rewards(scores, RewardScaling.SIGMOID_CENTERED)
    s2 = 1.0 / (1.0 + math.exp(-2.0)) - 0.5  # 0.3807970779...
    expected = torch.tensor([0.0, s2, -s2, 0.5, -0.5])
    torch.testing.assert_close(out, expected)
    assert out[0].item() == 0.0
    assert (out.abs() <= 0.5).all()


def test_sigmoid_centered_keeps_shape_and_accepts_strings() -> None:
    scores = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    out = scale_rewards(scores, "sigmoid_centered")
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, torch.sigmoid(scores) - 0.5)


def test_none_is_identity() -> None:
    scores = torch.tensor([[-3.0, 7.5], [0.0, 1e3]])
    assert torch.equal(scale_rewards(scores, RewardScaling.NONE), scores)
    with pytest.raises(ValueError):
        scale_rewards(scores, "tanh")


def test_running_moments_match_the_concatenation() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, generator=g) * 2 + 1, torch.randn(2, 4, generator=g) - 3,
               torch.tensor([10.0]), torch.randn(7, generator=g) * 0.1]
    rm = RunningMoments()
    assert (rm.mean, rm.std, rm.count) == (0.0, 1.0, 0)
    for b in batches:
        out = rm.update(b)
        assert out.mean == pytest.approx(b.mean().item(), abs=1e-6)
        # batch std is unbiased too; a single value has none (0, not NaN)
        assert out.std == pytest.approx(b.std().item() if b.numel() > 1 else 0.0, abs=1e-6)
    all_ = torch.cat([b.reshape(-1) for b in batches]).double()
    assert rm.count == all_.numel() == 19
    assert rm.mean == pytest.approx(all_.mean().item(), rel=1e-12)
    assert rm.std == pytest.approx(all_.std(unbiased=True).item(), rel=1e-12)  # Bessel's correction
    assert rm.var == pytest.approx(all_.var(unbiased=True).item(), rel=1e-12)


def test_running_moments_by_hand_and_state_round_trip() -> None:
    rm = RunningMoments()
    rm.update(torch.tensor([1.0, 2.0, 3.0]))  # mean 2, unbiased var 1
    assert (rm.mean, rm.std) == (pytest.approx(2.0), pytest.approx(1.0))
    resumed = RunningMoments()
    resumed.load_state_dict(rm.state_dict())
    for m in (rm, resumed):
        m.update(torch.tensor([5.0]))
    # [1, 2, 3, 5]: mean 2.75, Σ(x − μ)² = 1.75² + 0.75² + 0.25² + 2.25² = 8.75, var = 8.75 / 3
    assert rm.state_dict() == resumed.state_dict()
    assert rm.mean == pytest.approx(2.75)
    assert rm.std == pytest.approx(math.sqrt(8.75 / 3))
    with pytest.raises(ValueError, match="empty"):
        rm.update(torch.tensor([]))


def test_normalize_with_moments_by_hand() -> None:
    rm = RunningMoments()
    out = normalize_rewards(torch.tensor([1.0, 2.0, 3.0]), rm, clip=0.0)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0]))
    # the batch is folded in before normalising: [1, 2, 3, 5] → μ = 2.75, σ = √(8.75/3)
    out = normalize_rewards(torch.tensor([5.0]), rm, clip=0.0)
    torch.testing.assert_close(out, torch.tensor([(5.0 - 2.75) / math.sqrt(8.75 / 3)]))


def test_normalize_constant_stream_is_finite() -> None:
    rm = RunningMoments()
    out = normalize_rewards(torch.full((2, 3), 2.0), rm, clip=0.0)
    assert out.shape == (2, 3) and torch.equal(out, torch.zeros(2, 3))


def test_clip() -> None:
    x = torch.tensor([[-3.0, 0.5], [3.0, -0.2]])
    torch.testing.assert_close(normalize_rewards(x, None, clip=1.0), torch.tensor([[-1.0, 0.5], [1.0, -0.2]]))
    assert torch.equal(normalize_rewards(x, None, clip=0.0), x)  # 0 = no clipping
    with pytest.raises(ValueError, match="clip"):
        normalize_rewards(x, None, clip=-1.0)
    # normalise, then clip: [0, 0, 0, 10] → μ = 2.5, σ = 5, z = [−0.5, −0.5, −0.5, 1.5] → clip 1
    out = normalize_rewards(torch.tensor([0.0, 0.0, 0.0, 10.0]), RunningMoments(), clip=1.0)
    torch.testing.assert_close(out, torch.tensor([-0.5, -0.5, -0.5, 1.0]))
