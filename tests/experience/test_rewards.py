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
