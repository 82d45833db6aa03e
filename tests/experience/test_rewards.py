"""r2m.experience.rewards: the gold reward on world prompts, R2M's w/ Noise draw, and world-prompt detection."""

from __future__ import annotations

import torch

from r2m.config.run import WorldConfig
from r2m.experience.rewards import GoldReward, RewardQuery, is_world_prompt_set, noise_like, noise_seed
from r2m.world.task import format_prompt, gold_rewards

PROMPTS = [format_prompt([3, 1, 2]), format_prompt([5, 4])]
RESPONSES = ["1 2 3 <eos>", "5 4 <eos>"]


def test_gold_reward_is_the_worlds() -> None:
    out = GoldReward(WorldConfig())(RewardQuery(PROMPTS, RESPONSES))
    assert out.scores.dtype == torch.float32 and out.scores.shape == (2,)
    assert out.scores.tolist() == gold_rewards(PROMPTS, RESPONSES, WorldConfig())
    assert out.scores[0] > out.scores[1]  # sorted vs unsorted


def test_noise_keeps_each_dimensions_location_and_scale() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 5, 3, generator=g) * torch.tensor([0.7, 3.0, 0.1]) + torch.tensor([1.0, -2.0, 5.0])
    mask = torch.ones(64, 5)
    mask[:, 4] = 0  # padding: not part of the statistics
    h[:, 4] = 1e6
    z = noise_like(h, mask, torch.Generator().manual_seed(1))
    valid = z[mask.bool()]
    assert z.shape == h.shape
    torch.testing.assert_close(valid.mean(0), torch.tensor([1.0, -2.0, 5.0]), atol=0.35, rtol=0)
    torch.testing.assert_close(valid.std(0), torch.tensor([0.7, 3.0, 0.1]), atol=0, rtol=0.2)
    assert torch.equal(z, noise_like(h, mask, torch.Generator().manual_seed(1)))  # seeded


def test_noise_seed_is_one_draw_per_round() -> None:
    assert noise_seed(3, 5) == noise_seed(3, 5) != noise_seed(3, 6) and noise_seed(4, 5) != noise_seed(3, 5)


def test_world_prompt_set() -> None:
    assert is_world_prompt_set(PROMPTS)
    assert not is_world_prompt_set([*PROMPTS, "Human: hi"])


class _Fixed:
    """A stand-in RM reward: fixed scores per response text."""

    needs_policy_hidden, reward_model = False, "rm"

    def __init__(self, table: dict[str, float]):
        self.table = table

    def __call__(self, query: RewardQuery):
        from r2m.experience.rewards import RewardOutput

        return RewardOutput(torch.tensor([self.table[r] for r in query.responses]))


def test_ensemble_reward_standardises_each_member_then_combines() -> None:
    """Member 1 scores (1.0, 3.0) with moments (2, 1) -> (-1, 1); member 2 scores (0.5, 0.1) with moments (0.3, 0.2)
    -> (1, -1). Mean (0, 0); worst (-1, -1); uwo λ=0.5: variance 1 each -> (-0.5, -0.5)."""
    from r2m.config.enums import EnsembleMode
    from r2m.core.ensembles import EnsembleParams, Moments
    from r2m.experience.rewards import EnsembleReward

    a, b = _Fixed({"x": 1.0, "y": 3.0}), _Fixed({"x": 0.5, "y": 0.1})
    q = RewardQuery(["p", "p"], ["x", "y"])
    scales = [Moments(2.0, 1.0), Moments(0.3, 0.2)]
    for mode, want in (("mean", [0.0, 0.0]), ("worst", [-1.0, -1.0]), ("uwo", [-0.5, -0.5])):
        out = EnsembleReward([a, b], EnsembleMode(mode), scales, EnsembleParams(0.5))(q)
        torch.testing.assert_close(out.scores, torch.tensor(want))
        torch.testing.assert_close(out.vanilla, torch.tensor([0.0, 0.0]))  # the members' standardised mean


def test_gold_mixed_reward_mixes_gold_on_the_rms_scale() -> None:
    """Gold of PROMPTS/RESPONSES is (g0, g1); with gold moments (mean g0, SD g0 - g1) and RM moments (0.5, 2.0),
    ĝ = 0.5 + 2·(g - g0)/(g0 - g1) = (0.5, -1.5); λ = 0.5 with RM (1.0, 0.0): (0.75, -0.75)."""
    from r2m.core.ensembles import Moments
    from r2m.experience.rewards import GoldMixedReward

    g0, g1 = gold_rewards(PROMPTS, RESPONSES, WorldConfig())
    rm = _Fixed({RESPONSES[0]: 1.0, RESPONSES[1]: 0.0})
    mixed = GoldMixedReward(rm, GoldReward(WorldConfig()), 0.5, Moments(0.5, 2.0), Moments(g0, g0 - g1))
    out = mixed(RewardQuery(PROMPTS, RESPONSES))
    torch.testing.assert_close(out.scores, torch.tensor([0.75, -0.75]))
    torch.testing.assert_close(out.vanilla, torch.tensor([1.0, 0.0]))
    plain = GoldMixedReward(rm, GoldReward(WorldConfig()), 0.0, Moments(0.5, 2.0), Moments(g0, g0 - g1))
    assert torch.equal(plain(RewardQuery(PROMPTS, RESPONSES)).scores, torch.tensor([1.0, 0.0]))
