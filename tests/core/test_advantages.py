"""Hand-worked values, loop references and invariants for r2m.core.advantages."""

from __future__ import annotations

import pytest
import torch

from r2m.config.enums import Algorithm
from r2m.core.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInput,
    AdvantageOutput,
    AdvantageParams,
    GAEOutput,
    compute_advantages,
    compute_gae,
    compute_group_centered,
    compute_grpo_advantage,
    constant_groups,
    compute_remax_advantage,
    compute_returns,
    compute_rloo_advantage,
)


def _t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _right_padded_mask(lengths: list[int], t: int) -> torch.Tensor:
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).to(torch.float64)  # (B, T)


# ------------------------------------------------------------------ group estimators


def test_rloo_by_hand() -> None:
    adv = compute_rloo_advantage(_t([[1.0, 2.0, 3.0]]))
    assert torch.allclose(adv, _t([[1 - 2.5, 2 - 2.0, 3 - 1.5]]))
    with pytest.raises(ValueError):
        compute_rloo_advantage(_t([[1.0]]))


def test_rloo_and_grpo_sum_to_zero_per_group() -> None:
    r = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(compute_rloo_advantage(r).sum(-1), torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(compute_grpo_advantage(r).sum(-1), torch.zeros(4, dtype=torch.float64))


def test_grpo_by_hand_and_invariance() -> None:
    # mean 2, unbiased std 1 → (−1, 0, 1)
    assert torch.allclose(compute_grpo_advantage(_t([[1.0, 2.0, 3.0]]), eps=0.0), _t([[-1.0, 0.0, 1.0]]))
    r = torch.randn(3, 6, dtype=torch.float64)
    base = compute_grpo_advantage(r)
    assert torch.allclose(compute_grpo_advantage(r + 10.0), base, atol=1e-6)
    assert torch.allclose(compute_grpo_advantage(4.0 * r), base, atol=1e-5)
    # a constant group gives 0, not NaN
    assert torch.equal(compute_grpo_advantage(torch.ones(1, 4)), torch.zeros(1, 4))


def test_remax_by_hand() -> None:
    adv = compute_remax_advantage(_t([[1.0, 2.0], [3.0, 4.0]]), _t([1.5, 3.0]))
    assert torch.allclose(adv, _t([[-0.5, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError):
        compute_remax_advantage(_t([[1.0, 2.0]]), _t([1.0, 2.0]))


# ------------------------------------------------------------------ token-level estimators


def _loop_returns(rewards: torch.Tensor, lengths: list[int], gamma: float) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        for t in range(n):
            out[b, t] = sum(gamma ** (u - t) * rewards[b, u].item() for u in range(t, n))
    return out


def _loop_gae(
    rewards: torch.Tensor, values: torch.Tensor, lengths: list[int], gamma: float, lam: float
) -> torch.Tensor:
    out = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        deltas = []
        for t in range(n):
            next_v = values[b, t + 1].item() if t + 1 < n else 0.0
            deltas.append(rewards[b, t].item() + gamma * next_v - values[b, t].item())
        for t in range(n):
            out[b, t] = sum((gamma * lam) ** (u - t) * deltas[u] for u in range(t, n))
    return out


def test_compute_returns_matches_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    lengths, t = [5, 1, 3, 0, 4], 5
    mask = _right_padded_mask(lengths, t)
    rewards = torch.randn(len(lengths), t, generator=gen, dtype=torch.float64)
    got = compute_returns(rewards, mask, gamma=0.9)
    assert torch.allclose(got, _loop_returns(rewards, lengths, 0.9))
    assert torch.equal(got * (1 - mask), torch.zeros_like(got))


def test_compute_gae_matches_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    lengths, t = [6, 2, 4, 1, 0, 5], 6
    mask = _right_padded_mask(lengths, t)
    rewards = torch.randn(len(lengths), t, generator=gen, dtype=torch.float64)
    values = torch.randn(len(lengths), t, generator=gen, dtype=torch.float64)
    out = compute_gae(rewards, values, mask, gamma=0.95, lam=0.8)
    assert isinstance(out, GAEOutput)
    expected = _loop_gae(rewards, values, lengths, 0.95, 0.8)
    assert torch.allclose(out.advantages, expected)
    assert torch.allclose(out.returns, (expected + values) * mask)
    # λ = 1 with zero values: GAE reduces to the discounted return
    zero_v = compute_gae(rewards, torch.zeros_like(values), mask, 0.9, 1.0)
    assert torch.allclose(zero_v.advantages, _loop_returns(rewards, lengths, 0.9))


def _inputs(n: int = 3, k: int = 4, t: int = 5, seed: int = 0) -> AdvantageInput:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n * k,), generator=gen).tolist()
    mask = _right_padded_mask(lengths, t)
    return AdvantageInput(
        scores=torch.randn(n, k, generator=gen, dtype=torch.float64),
        mask=mask,
        kl_penalty=0.1 * torch.rand(n * k, t, generator=gen, dtype=torch.float64),
        values=torch.randn(n * k, t, generator=gen, dtype=torch.float64),
        baseline=torch.randn(n, generator=gen, dtype=torch.float64),
    )


def test_reinforce_pp_returns_and_whitening() -> None:
    inp = _inputs(seed=3)
    lengths = inp.mask.sum(-1).long().tolist()
    # token rewards by hand: −β·KL on every valid token, the score added on the last one
    token_rewards = torch.zeros_like(inp.mask)
    for row, n in enumerate(lengths):
        for t in range(n):
            token_rewards[row, t] = -inp.kl_penalty[row, t]
        token_rewards[row, n - 1] += inp.scores.reshape(-1)[row]
    expected = _loop_returns(token_rewards, lengths, 0.9)

    raw = compute_advantages("reinforce_pp", inp, AdvantageParams(gamma=0.9, whiten=False))
    assert torch.allclose(raw.returns, expected)
    assert torch.allclose(raw.advantages, expected)

    out = compute_advantages(Algorithm.REINFORCE_PP, inp, AdvantageParams(gamma=0.9))
    assert torch.allclose(out.returns, expected)
    valid = out.advantages[inp.mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-6)


def test_ppo_estimator_is_gae_on_token_rewards() -> None:
    inp = _inputs(seed=4)
    params = AdvantageParams(gamma=0.99, lam=0.9, whiten=False)
    out = compute_advantages("ppo", inp, params)
    # same token rewards as REINFORCE++ (its unwhitened advantages are γ-returns of them)
    token_rewards = compute_advantages("reinforce_pp", inp, AdvantageParams(gamma=0.0, whiten=False)).returns
    lengths = inp.mask.sum(-1).long().tolist()
    expected = _loop_gae(token_rewards, inp.values, lengths, 0.99, 0.9)
    assert torch.allclose(out.advantages, expected)
    assert torch.allclose(out.returns, (expected + inp.values) * inp.mask)
    whitened = compute_advantages("ppo", inp, AdvantageParams(gamma=0.99, lam=0.9)).advantages
    assert whitened[inp.mask.bool()].mean().item() == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------ registry


def test_registry_covers_every_algorithm() -> None:
    """One enum: every rl.algorithm has its estimator, keyed by the Algorithm itself (PPO: GAE)."""
    assert set(ADVANTAGE_ESTIMATORS) == set(Algorithm)
    assert ADVANTAGE_ESTIMATORS[Algorithm.PPO].__name__ == "gae_estimator"


@pytest.mark.parametrize("estimator", list(Algorithm))
def test_every_estimator_zero_on_masked_positions(estimator: Algorithm) -> None:
    inp = _inputs(seed=5)
    out = compute_advantages(estimator.value, inp, AdvantageParams())
    assert isinstance(out, AdvantageOutput)
    assert out.advantages.shape == inp.mask.shape and out.returns.shape == inp.mask.shape
    padding = inp.mask == 0
    assert padding.any()
    assert torch.equal(out.advantages[padding], torch.zeros(int(padding.sum()), dtype=torch.float64))
    assert torch.equal(out.returns[padding], torch.zeros(int(padding.sum()), dtype=torch.float64))
    assert torch.isfinite(out.advantages).all()


@pytest.mark.parametrize("estimator", [Algorithm.RLOO, Algorithm.GRPO, Algorithm.REMAX])
def test_sequence_estimators_broadcast(estimator: Algorithm) -> None:
    inp = _inputs(seed=6)
    out = compute_advantages(estimator, inp)
    r = inp.scores - (inp.kl_penalty * inp.mask).sum(-1).view_as(inp.scores)
    expected = {
        Algorithm.RLOO: compute_rloo_advantage(r),
        Algorithm.GRPO: compute_grpo_advantage(r),
        Algorithm.REMAX: compute_remax_advantage(r, inp.baseline),
    }[estimator]
    assert torch.allclose(out.advantages, expected.reshape(-1, 1) * inp.mask)
    assert torch.allclose(out.returns, r.reshape(-1, 1) * inp.mask)


def test_kl_penalty_lowers_rloo_reward() -> None:
    mask = _t([[1, 1, 0], [1, 1, 1], [1, 0, 0]])  # one prompt, K = 3
    kl = torch.zeros(3, 3, dtype=torch.float64)
    kl[0, :2] = 1.0  # sample 0 pays β·KL = 1 on each of its two tokens
    kl[0, 2] = 50.0  # on padding: must be ignored
    inp = AdvantageInput(scores=torch.zeros(1, 3, dtype=torch.float64), mask=mask, kl_penalty=kl)
    out = compute_advantages("rloo", inp)
    # r = (−2, 0, 0) → A = (−2 − 0, 0 − (−1), 0 − (−1))
    assert torch.allclose(out.returns, _t([[-2.0], [0.0], [0.0]]) * mask)
    assert torch.allclose(out.advantages, _t([[-2.0], [1.0], [1.0]]) * mask)
    no_kl = compute_advantages("rloo", AdvantageInput(scores=inp.scores, mask=mask))
    assert torch.equal(no_kl.advantages, torch.zeros(3, 3, dtype=torch.float64))


def test_unknown_estimator_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        compute_advantages("ppo2", _inputs())
    for e in Algorithm:
        assert e.value in str(err.value)


def test_missing_inputs_raise() -> None:
    inp = _inputs()
    with pytest.raises(ValueError, match="baseline"):
        compute_advantages("remax", AdvantageInput(scores=inp.scores, mask=inp.mask))
    with pytest.raises(ValueError, match="values"):
        compute_advantages("ppo", AdvantageInput(scores=inp.scores, mask=inp.mask))
    with pytest.raises(ValueError, match="mask"):
        compute_advantages("rloo", AdvantageInput(scores=inp.scores, mask=inp.mask[:-1]))
    with pytest.raises(ValueError, match="gamma"):
        AdvantageParams(gamma=1.5)


# ------------------------------------------------------------------ constant groups (exactly zero)


@pytest.mark.parametrize("k", [8, 16])
@pytest.mark.parametrize("value", [0.7, 3.7, 12.9, -5.3])
def test_grpo_constant_group_is_exactly_zero(value: float, k: int) -> None:
    # float32 sums of these are inexact: mean and std are off by ~1 ulp, and (r - mean)/(std + eps) was
    # non-zero and identical for every sample (|A| up to 0.95 at 12.9). An all-equal group must give 0.
    r = torch.full((2, k), value, dtype=torch.float32)
    assert torch.equal(compute_grpo_advantage(r), torch.zeros(2, k))
    assert torch.equal(compute_group_centered(r), torch.zeros(2, k))
    inp = AdvantageInput(scores=r, mask=torch.ones(2 * k, 3))
    for est in (Algorithm.GRPO, Algorithm.DR_GRPO, Algorithm.RLOO, Algorithm.REINFORCE_PP_BASELINE):
        adv = compute_advantages(est, inp).advantages
        assert torch.equal(adv, torch.zeros_like(adv)), est


def test_grpo_constant_rows_beside_varied_rows() -> None:
    r = torch.tensor([[0.7] * 8, [0.7, 1.3, 0.2, 0.7, 0.9, 0.1, 0.5, 0.6]], dtype=torch.float32)
    adv = compute_grpo_advantage(r)
    assert torch.equal(adv[0], torch.zeros(8))
    loop = [(x - r[1].mean()) / (r[1].std() + 1e-6) for x in r[1]]
    torch.testing.assert_close(adv[1], torch.stack(loop))
    assert constant_groups(r).view(-1).tolist() == [True, False]


# ------------------------------------------------------------------ Dr. GRPO and REINFORCE++-baseline


def test_dr_grpo_by_hand() -> None:
    # r = (1, 2, 3.5) has mean 13/6
    r = _t([[1.0, 2.0, 3.5]])
    assert torch.allclose(compute_group_centered(r), _t([[1 - 13 / 6, 2 - 13 / 6, 3.5 - 13 / 6]]))
    # no std scaling: scaling the rewards scales the advantage
    assert torch.allclose(compute_group_centered(4.0 * r), 4.0 * compute_group_centered(r))
    inp = _inputs(seed=7)
    out = compute_advantages(Algorithm.DR_GRPO, inp)
    seq = inp.scores - (inp.kl_penalty * inp.mask).sum(-1).view_as(inp.scores)
    assert torch.allclose(out.advantages, (seq - seq.mean(-1, keepdim=True)).reshape(-1, 1) * inp.mask)


def test_reinforce_pp_baseline_matches_loop() -> None:
    inp = _inputs(seed=8)
    n, k = inp.scores.shape
    out = compute_advantages(Algorithm.REINFORCE_PP_BASELINE, inp, AdvantageParams(gamma=1.0))
    # The loop: centred score at each row's last token, minus beta*KL per token, reward-to-go, global whitening.
    m = inp.mask
    returns = torch.zeros_like(m)
    for i in range(n * k):
        centred = inp.scores.view(-1)[i] - inp.scores[i // k].mean()
        valid = [t for t in range(m.shape[1]) if m[i, t] > 0]
        token_r = {t: -inp.kl_penalty[i, t].item() for t in valid}
        token_r[valid[-1]] += centred.item()
        running = 0.0
        for t in reversed(valid):
            running = token_r[t] + running
            returns[i, t] = running
    vals = returns[m.bool()]
    expected = (returns - vals.mean()) / torch.sqrt(vals.var() + 1e-8) * m
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(out.returns, returns)
