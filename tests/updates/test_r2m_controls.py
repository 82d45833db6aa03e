"""The benchmark's controls in the loop: oracle (gold) and random winner/loser in R2M's update, and the scale
control's reward vanilla × ω(t)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from r2m.config.enums import PairChoice
from r2m.config.models import R2MConfig
from r2m.config.training import RLConfig
from r2m.core.pair_choice import choose_random, pair_seed
from r2m.models.fusion import omega
from r2m.experience.rewards import ModelReward, OmegaScaledReward, RewardQuery
from r2m.updates.grebt import GREBTUpdater


def _setup(bed, r2m: R2MConfig, gold: bool = True):
    """``bed``: the ``r2m_bed`` fixture (tests/updates/conftest.py)."""
    out = bed.rollout(r2m, RLConfig(prompts_per_step=4, k=4, minibatches=2, epochs=1, lr=0.05), gold=gold, seed=3)
    return out.reward, out.exp


def _expected_bt(updater: GREBTUpdater, exp, winner: torch.Tensor, loser: torch.Tensor) -> float:
    with torch.no_grad():
        h = updater.schedule.hidden(exp.policy_hidden, exp.policy_mask, exp.step)
        r = updater.rescore(exp, h)  # (n, K) before the update
    rows = torch.arange(exp.n)
    return (-F.logsigmoid(r[rows, winner] - r[rows, loser])).mean().item()


@pytest.mark.parametrize("choice", [PairChoice.GOLD, PairChoice.RANDOM])
def test_control_update_uses_its_pair_and_trains_fusion_and_head(r2m_bed, choice) -> None:
    cfg = R2MConfig(enabled=True, lr=1e-2, pair_choice=choice)
    reward, exp = _setup(r2m_bed, cfg)
    updater = GREBTUpdater(reward.model, reward.schedule, cfg)
    gold = exp.gold.view(exp.n, exp.k)
    if choice is PairChoice.GOLD:
        w, l = gold.max(-1).indices, gold.min(-1).indices
        flat = gold.max(-1).values == gold.min(-1).values
        w, l = torch.where(flat, 0, w), torch.where(flat, 0, l)
    else:
        p = choose_random(gold, None, torch.Generator().manual_seed(pair_seed(3, exp.step)))
        w, l = p.winner, p.loser
    expected = _expected_bt(updater, exp, w, l)
    fusion = {k: v.clone() for k, v in reward.model.fusion.state_dict().items()}
    backbone = {k: v.clone() for k, v in reward.model.rm.backbone.state_dict().items()}
    stats = updater.update(exp, exp.policy_hidden)
    assert stats["r2m/bt"] == pytest.approx(expected, rel=1e-5)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert any(not torch.equal(v, reward.model.fusion.state_dict()[k]) for k, v in fusion.items())
    assert all(torch.equal(v, reward.model.rm.backbone.state_dict()[k]) for k, v in backbone.items())


def test_self_choice_is_the_papers_argmax_argmin(r2m_bed) -> None:
    cfg = R2MConfig(enabled=True, lr=1e-2)
    reward, exp = _setup(r2m_bed, cfg)
    updater = GREBTUpdater(reward.model, reward.schedule, cfg)
    with torch.no_grad():
        r = updater.rescore(exp, reward.schedule.hidden(exp.policy_hidden, exp.policy_mask, exp.step))
    expected = _expected_bt(updater, exp, r.max(-1).indices, r.min(-1).indices)
    assert updater.pair(exp, r) is None  # grebt_terms' own max/min: the default update is untouched
    assert updater.update(exp, exp.policy_hidden)["r2m/bt"] == pytest.approx(expected, rel=1e-5)


def test_oracle_needs_gold(r2m_bed) -> None:
    cfg = R2MConfig(enabled=True, pair_choice=PairChoice.GOLD)
    reward, exp = _setup(r2m_bed, cfg, gold=False)
    with pytest.raises(ValueError, match="pair_choice=gold"):
        GREBTUpdater(reward.model, reward.schedule, cfg).update(exp, exp.policy_hidden)


def test_scale_control_is_vanilla_times_omega(r2m_bed) -> None:
    rm = r2m_bed.rm()
    inner = ModelReward(rm)
    scaled = OmegaScaledReward(inner, omega_floor=0.6, total_steps=10)
    resp = ["1 2 3 <eos>", "0 4 4 9 <eos>", "1 5 5 5 <eos>", "0 1 2 <eos>"]
    for step in (0, 5, 7, 10):
        out = scaled(RewardQuery(r2m_bed.prompts, resp, step=step))
        vanilla = inner(RewardQuery(r2m_bed.prompts, resp)).scores
        assert torch.equal(out.vanilla, vanilla)
        torch.testing.assert_close(out.scores, vanilla * omega(step, 10, 0.6))
    assert scaled.omega(0) == 1.0 and scaled.omega(10) == 0.6 and scaled.omega(5) == pytest.approx(0.6)
    assert not scaled.needs_policy_hidden and scaled.reward_model is rm


def test_build_reward_wires_the_scale_control_and_the_blind_view(r2m_bed) -> None:
    from r2m.config.parsing import load_config
    from r2m.experience.reward_factory import build_reward

    cfg = load_config(None, ["reward.baseline=scale_control", "world.rm_prompt_digits=2"])
    reward = build_reward(cfg, str(r2m_bed.rm_dir), torch.device("cpu"))
    assert isinstance(reward, OmegaScaledReward) and reward.total_steps == cfg.rl.steps
    assert reward.reward_model.prompt_view("<bos> 3 1 2 =>") == "<bos> 3 1 <unk> =>"
    plain = build_reward(load_config(None, []), str(r2m_bed.rm_dir), torch.device("cpu"))
    assert isinstance(plain, ModelReward) and plain.reward_model.prompt_view is None
