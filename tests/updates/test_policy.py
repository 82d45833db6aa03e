"""The policy-gradient updater: micro-batching changes nothing, the policy moves, the reference does not."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from r2m.config.models import ArchConfig
from r2m.config.training import RLConfig
from r2m.config.run import WorldConfig
from r2m.models.loading import build_world_lm
from r2m.experience.rewards import GoldReward
from r2m.experience.rollout import ExperienceMaker, experience_metrics
from r2m.experience.sampling import tokenize_prompts
from r2m.updates.policy import PolicyUpdater
from r2m.recipes.rl.setup import PromptSampler
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt

PROMPTS = [format_prompt(d) for d in ([3, 1, 2], [9, 0, 4, 4], [5, 5, 1], [7, 2, 8, 1, 0], [6, 3, 3], [1, 2, 0])]


def _setup(cfg: RLConfig, seed: int = 0):
    tok = build_tokenizer("policy")
    policy = build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, seed)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    maker = ExperienceMaker(policy, ref, tok, GoldReward(WorldConfig()), cfg, torch.device("cpu"))
    prompts = tokenize_prompts(tok, PROMPTS[:4], 64, "truncate")
    torch.manual_seed(seed)
    return policy, ref, maker.make(prompts.texts, prompts.ids)


def _update(policy, exp, cfg: RLConfig):
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    torch.manual_seed(123)  # the minibatch permutation
    return PolicyUpdater(policy, opt, Accelerator(cpu=True), cfg).update(exp).stats


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"])
@pytest.mark.parametrize("kl_mode", ["reward", "loss"])
def test_micro_batches_equal_the_whole_minibatch(aggregation, kl_mode) -> None:
    base = dict(prompts_per_step=4, k=2, minibatches=2, epochs=1, aggregation=aggregation, kl_mode=kl_mode,
                beta=0.1, kl_estimator="k3", lr=0.1)
    whole, split = RLConfig(**base), RLConfig(**base, micro_batch_size=1)
    policy, _, exp = _setup(whole)
    p_split = copy.deepcopy(policy)
    s1 = _update(policy, exp, whole)
    s2 = _update(p_split, exp, split)
    for a, b in zip(policy.parameters(), p_split.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # The reported metrics do not depend on micro-batching either.
    for key in ("loss/total", "loss/policy", "policy/grad_norm"):
        assert s1[key] == pytest.approx(s2[key], abs=1e-5), key


def test_policy_moves_reference_does_not() -> None:
    cfg = RLConfig(prompts_per_step=4, k=2, minibatches=2, epochs=2, lr=0.1)
    policy, ref, exp = _setup(cfg)
    before = copy.deepcopy(policy.state_dict())
    ref_before = copy.deepcopy(ref.state_dict())
    stats = _update(policy, exp, cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert all(torch.equal(ref_before[k], v) for k, v in ref.state_dict().items())
    assert not any(p.requires_grad for p in ref.parameters())


def test_first_update_is_on_policy() -> None:
    """Before any update, pi_theta == pi_old: ratio 1, nothing clipped, approx KL 0."""
    cfg = RLConfig(prompts_per_step=4, k=2, minibatches=1, epochs=1)
    policy, _, exp = _setup(cfg)
    stats = _update(policy, exp, cfg)
    assert stats["policy/clip_frac"] == 0.0 and stats["policy/approx_kl"] == pytest.approx(0.0, abs=1e-10)


def test_experience_layout_and_metrics() -> None:
    cfg = RLConfig(prompts_per_step=4, k=3)
    _, _, exp = _setup(cfg)
    assert exp.batch_size == 12 and exp.n == 4 and exp.k == 3
    assert exp.prompts[:3] == [PROMPTS[0]] * 3 and exp.prompts[3] == PROMPTS[1]
    # RLOO advantages sum to zero in every group (per sequence, broadcast over tokens).
    m = exp.action_mask.float()
    seq_adv = (exp.advantages * m).sum(-1) / m.sum(-1)
    torch.testing.assert_close(seq_adv.view(4, 3).sum(-1), torch.zeros(4), atol=1e-5, rtol=0)
    # Advantage (sequence reward) reflects the KL penalty in the reward: identical policy/ref -> no penalty.
    torch.testing.assert_close(exp.old_logprobs, exp.ref_logprobs)
    metrics = experience_metrics(exp)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6) and "reward/gold" not in metrics


def test_prompt_sampler_covers_each_prompt_once_per_pass() -> None:
    s = PromptSampler(5, seed=0)
    first = s.next(3) + s.next(2)
    assert sorted(first) == list(range(5))
    second = s.next(5)
    assert sorted(second) == list(range(5)) and s.position == 10
    again = PromptSampler(5, seed=0)
    assert again.next(5) == first
