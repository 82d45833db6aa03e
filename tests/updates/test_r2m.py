"""R2M in the loop: feedback from the rollout pass, last-epoch refresh, the GREBT update, ablations."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from r2m.config.models import R2MConfig
from r2m.config.training import RLConfig
from r2m.core.losses import within_group_spread
from r2m.models.r2m import build_feedback_rm, load_feedback_rm
from r2m.experience.rewards import FeedbackReward, RewardQuery, noise_like
from r2m.models.feedback import feedback_states
from r2m.updates.policy import PolicyUpdater
from r2m.updates.grebt import GREBTUpdater


def _setup(bed, r2m: R2MConfig, rl: RLConfig = RLConfig(prompts_per_step=4, k=2, minibatches=2, epochs=2, lr=0.05),
           feedback: bool = True):
    """``bed``: the ``r2m_bed`` fixture (tests/updates/conftest.py)."""
    out = bed.rollout(r2m, rl, feedback=feedback)
    return out.policy, out.reward, out.exp, rl


def _grebt(reward: FeedbackReward, cfg: R2MConfig) -> GREBTUpdater:
    """R2M's GREBT update of ``reward``'s model, with ``cfg``."""
    return GREBTUpdater(reward.model, reward.schedule, cfg)


def _snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_rollout_collects_feedback_in_the_logprob_pass(r2m_bed) -> None:
    _, reward, exp, _ = _setup(r2m_bed, R2MConfig(enabled=True))
    B, S = exp.sequences.shape
    assert exp.policy_hidden.shape == (B, S - 1, r2m_bed.d_p) and exp.policy_mask.shape == (B, S - 1)
    assert exp.rm_embeddings.shape == (B, r2m_bed.d_m)
    # h_ij has S_ij - 1 states: each row loses its own last token, whatever its length.
    assert torch.equal(exp.policy_mask.sum(-1), exp.attention_mask.sum(-1) - 1)
    assert torch.equal(exp.policy_mask, feedback_states(exp.policy_hidden, exp.attention_mask).mask)
    # Rewards are annotated with the feedback at step t (omega(3) for T=10).
    w = reward.omega(3)
    again = reward.model.score_embeddings(exp.rm_embeddings, exp.policy_hidden, exp.policy_mask, w)
    torch.testing.assert_close(again, exp.scores)


def test_only_fusion_and_head_receive_gradients(r2m_bed) -> None:
    _, reward, exp, _ = _setup(r2m_bed, R2MConfig(enabled=True, lr=1e-2))
    model = reward.model
    backbone, fusion, head, base = (_snapshot(model.rm.backbone), _snapshot(model.fusion), _snapshot(model.head),
                                    _snapshot(model.base_head))
    stats = _grebt(reward, reward.cfg).update(exp, exp.policy_hidden)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert not any(p.requires_grad for p in model.rm.backbone.parameters())
    assert all(torch.equal(v, model.rm.backbone.state_dict()[k]) for k, v in backbone.items())
    assert all(torch.equal(v, model.base_head.state_dict()[k]) for k, v in base.items())
    assert any(not torch.equal(v, model.fusion.state_dict()[k]) for k, v in fusion.items())
    assert any(not torch.equal(v, model.head.state_dict()[k]) for k, v in head.items())
    assert not model.rm.model.training  # the backbone stays in eval mode


def test_grebt_parts_follow_alpha(r2m_bed) -> None:
    for ablation, check in [("no_bt", lambda s: s["r2m/grebt"] == pytest.approx(s["r2m/gre"])),
                            ("no_gre", lambda s: s["r2m/grebt"] == pytest.approx(s["r2m/bt"]))]:
        cfg = R2MConfig(enabled=True, ablation=ablation)
        _, reward, exp, _ = _setup(r2m_bed, cfg)
        assert check(_grebt(reward, cfg).update(exp, exp.policy_hidden)), ablation
    assert R2MConfig(alpha=0.3).effective_alpha == 0.3


def test_frozen_ablation_never_updates(r2m_bed) -> None:
    cfg = R2MConfig(enabled=True, ablation="frozen")
    _, reward, exp, _ = _setup(r2m_bed, cfg)
    before = _snapshot(reward.model)
    stats = _grebt(reward, cfg).update(exp, exp.policy_hidden)
    assert "r2m/grebt" not in stats
    assert all(torch.equal(v, reward.model.state_dict()[k]) for k, v in before.items())


def test_noise_ablation_replaces_h_with_matched_noise(r2m_bed) -> None:
    cfg = R2MConfig(enabled=True, ablation="noise")
    _, reward, exp, _ = _setup(r2m_bed, cfg)
    h, m = exp.policy_hidden, exp.policy_mask
    noisy = reward.schedule.hidden(h, m, step=3)
    assert noisy.shape == h.shape and not torch.allclose(noisy, h)
    # Per feature dimension: each keeps h's own mean and std (h's dimensions differ in scale).
    valid, fake = h[m.bool()], noisy[m.bool()]
    z = (fake.mean(0) - valid.mean(0)) / (valid.std(0) / len(valid) ** 0.5)  # (D,) standard errors off
    assert z.abs().max() < 5, z
    ratio = fake.std(0) / valid.std(0)
    assert ((ratio > 0.6) & (ratio < 1.4)).all(), ratio
    # One draw per round: annotation and update of round 3 read the same noise; round 4 another.
    assert torch.equal(reward.schedule.hidden(h, m, step=3), noisy)
    assert not torch.equal(reward.schedule.hidden(h, m, step=4), noisy)
    # The draw touches no global RNG stream (sampling is unchanged by the ablation).
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    reward.schedule.hidden(h, m, step=5)
    assert torch.equal(torch.rand(3), expected)
    # Without the ablation h passes through untouched.
    plain = FeedbackReward(reward.model, R2MConfig(enabled=True), 10)
    assert plain.schedule.hidden(h, m, step=3) is h


def test_noise_like_matches_each_dimension_not_one_scalar() -> None:
    # Two dimensions of very different scale: a scalar mean/std over all entries would give both the
    # pooled scale (the old behaviour); per-dimension statistics keep each one's own.
    g = torch.Generator().manual_seed(0)
    h = torch.stack([torch.randn(4, 50, generator=g) * 0.1 + 3.7, torch.randn(4, 50, generator=g) * 5.3 - 1.3], -1)
    m = (torch.rand(4, 50, generator=g) > 0.3).long()
    noise = noise_like(h, m, torch.Generator().manual_seed(1))[m.bool()]  # (n, 2)
    assert noise[:, 0].mean().item() == pytest.approx(3.7, abs=0.05)
    assert noise[:, 0].std().item() == pytest.approx(0.1, rel=0.15)
    assert noise[:, 1].std().item() == pytest.approx(5.3, rel=0.15)


def test_zero_init_equals_vanilla_rm_at_t0(r2m_bed) -> None:
    cfg = R2MConfig(enabled=True, init="zero")
    _, reward, exp, _ = _setup(r2m_bed, cfg)
    q = RewardQuery(exp.prompts, exp.responses, exp.policy_hidden, exp.policy_mask, step=0)
    out = reward(q)
    torch.testing.assert_close(out.scores, out.vanilla)
    # With random init the feedback changes the reward.
    rand = FeedbackReward(build_feedback_rm(reward.model.rm, r2m_bed.d_p, 16, 2, "random"), R2MConfig(enabled=True), 10)
    assert not torch.allclose(rand(RewardQuery(exp.prompts, exp.responses, exp.policy_hidden, exp.policy_mask,
                                                step=5)).scores, out.vanilla)


def test_iterative_head_updates_head_only_without_feedback(r2m_bed) -> None:
    cfg = R2MConfig(lr=1e-2)
    _, reward, exp, _ = _setup(r2m_bed, cfg, feedback=False)
    assert reward.model.fusion is None and not reward.needs_policy_hidden and exp.policy_hidden is None
    # Annotation-time scores are the vanilla RM's.
    torch.testing.assert_close(exp.scores, reward.model.vanilla_score(exp.rm_embeddings))
    head = _snapshot(reward.model.head)
    _grebt(reward, cfg).update(exp, exp.policy_hidden)
    assert any(not torch.equal(v, reward.model.head.state_dict()[k]) for k, v in head.items())


def test_refresh_in_last_epoch_only(r2m_bed) -> None:
    """The policy update hands back the last epoch's states of every row, once, as GREBT keeps them (its h)."""
    rl = RLConfig(prompts_per_step=4, k=2, minibatches=2, epochs=3, lr=0.05, micro_batch_size=2)
    policy, reward, exp, _ = _setup(r2m_bed, R2MConfig(enabled=True), rl)
    h0 = exp.policy_hidden.clone()
    grebt, kept_rows = _grebt(reward, reward.cfg), []

    def keep(states):  # (b, P+R, D_p) of one micro-batch
        kept_rows.append(states.shape[0])
        assert states.shape[1] == exp.sequences.shape[1] and not states.requires_grad
        return grebt.keep_states(states)

    updater = PolicyUpdater(policy, torch.optim.SGD(policy.parameters(), lr=0.5), Accelerator(cpu=True), rl)
    update = updater.update(exp, keep_states=keep)
    assert sum(kept_rows) == exp.batch_size and len(kept_rows) == 4  # every row once: the last epoch's 4 parts
    assert update.states.shape == h0.shape and update.states.dtype == h0.dtype
    assert not torch.allclose(update.states, h0)  # the policy moved, so its states did
    # The refreshed h is returned, not written into the Experience (R2M's update takes it explicitly).
    assert torch.equal(exp.policy_hidden, h0) and update.states.data_ptr() != exp.policy_hidden.data_ptr()
    # With a policy that cannot move, the refreshed states are the rollout's.
    policy2, reward2, exp2, _ = _setup(r2m_bed, R2MConfig(enabled=True), rl)
    h2 = exp2.policy_hidden.clone()
    update2 = PolicyUpdater(policy2, torch.optim.SGD(policy2.parameters(), lr=0.0), Accelerator(cpu=True),
                            rl).update(exp2, keep_states=_grebt(reward2, reward2.cfg).keep_states)
    torch.testing.assert_close(update2.states, h2, atol=1e-5, rtol=1e-5)


def test_keep_states_is_h_in_the_hidden_store(r2m_bed) -> None:
    """GREBT's h from a pass's states: each row's states without the batch's last column, in the store's dtype."""
    from r2m.experience.rollout import HiddenStore

    _, reward, exp, _ = _setup(r2m_bed, R2MConfig(enabled=True))
    states = torch.randn(3, 7, r2m_bed.d_p) * 0.7
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0, 0]])
    store = HiddenStore(torch.device("cpu"), torch.bfloat16)
    kept = GREBTUpdater(reward.model, reward.schedule, reward.cfg, store=store).keep_states(states)
    assert kept.dtype == torch.bfloat16 and kept.shape == (3, 6, r2m_bed.d_p)
    assert torch.equal(kept, feedback_states(states, mask).hidden.to(torch.bfloat16))


def test_no_refresh_without_feedback(r2m_bed) -> None:
    rl = RLConfig(prompts_per_step=4, k=2, minibatches=2, epochs=2)
    policy, reward, exp, _ = _setup(r2m_bed, R2MConfig(), rl, feedback=False)
    assert not _grebt(reward, reward.cfg).reads_hidden
    updater = PolicyUpdater(policy, torch.optim.SGD(policy.parameters(), lr=0.1), Accelerator(cpu=True), rl)
    assert updater.update(exp).states is None


def test_checkpoint_round_trip(r2m_bed, tmp_path) -> None:
    cfg = R2MConfig(enabled=True, lr=1e-2)
    _, reward, exp, _ = _setup(r2m_bed, cfg)
    _grebt(reward, cfg).update(exp, exp.policy_hidden)
    reward.model.save(tmp_path / "r2m", base_rm=str(r2m_bed.rm_dir))
    loaded = load_feedback_rm(tmp_path / "r2m")
    w = reward.omega(9)
    a = reward.model.score_embeddings(exp.rm_embeddings, exp.policy_hidden, exp.policy_mask, w)
    rte = loaded.embed_texts(exp.prompts, exp.responses)
    torch.testing.assert_close(rte, exp.rm_embeddings)
    torch.testing.assert_close(loaded.score_embeddings(rte, exp.policy_hidden, exp.policy_mask, w), a)
    torch.testing.assert_close(loaded.vanilla_score(rte), reward.model.vanilla_score(rte))


def _spreads(model, exp, k):
    parts = model.score_parts(exp.rm_embeddings, exp.policy_hidden, exp.policy_mask, 0.0)  # fusion = w·Ĥ
    rte = exp.rm_embeddings @ model.head.weight.float().view(-1)
    return within_group_spread(parts.fusion, k).item(), within_group_spread(rte, k).item()


def test_matched_init_gives_the_fusion_the_rte_spread(r2m_bed, tmp_path) -> None:
    # random init: φ(Ĥ) is far narrower than φ(H_last), so "w/o Train" would be ω(t) × vanilla
    _, rand, exp_r, rl = _setup(r2m_bed, R2MConfig(enabled=True, init="random"))
    s_fusion, s_rte = _spreads(rand.model, exp_r, rl.k)
    assert s_fusion < 0.5 * s_rte and rand.calibration is None
    # matched: scoring alone never rescales W_o (a no-grad reward call changes nothing) ...
    _, reward, exp, rl = _setup(r2m_bed, R2MConfig(enabled=True, init="matched"))
    assert not bool(reward.model.fusion.calibrated) and reward.calibration is None
    # ... calibrate does, once, on a rollout batch, to the same within-group spread
    query = RewardQuery(exp.prompts, exp.responses, exp.policy_hidden, exp.policy_mask, step=exp.step,
                        group_size=rl.k)
    assert reward.calibrates(query)
    calibrated = reward.calibrate(query)
    assert torch.equal(calibrated.rm_embeddings, exp.rm_embeddings)  # H_last handed on to the scoring that follows
    s_fusion, s_rte = _spreads(reward.model, exp, rl.k)
    assert s_fusion == pytest.approx(s_rte, rel=1e-4) and reward.calibration > 1.0
    assert bool(reward.model.fusion.calibrated) and not reward.calibrates(query)
    # Scoring with the handed-on H_last is scoring the texts again.
    torch.testing.assert_close(reward(calibrated).scores, reward(query).scores, rtol=0, atol=0)
    w_o = reward.model.fusion.w_o.weight.clone()
    assert reward.model.calibrate(exp.rm_embeddings, exp.policy_hidden, exp.policy_mask, rl.k) is None
    assert torch.equal(reward.model.fusion.w_o.weight, w_o)  # never twice
    # the flag travels with the weights: a reloaded model is not rescaled again
    reward.model.save(tmp_path / "r2m", base_rm=str(r2m_bed.rm_dir))
    loaded = load_feedback_rm(tmp_path / "r2m")
    assert bool(loaded.fusion.calibrated) and torch.equal(loaded.fusion.w_o.weight, w_o)
    # evaluation queries (no group structure) never calibrate
    _, fresh, exp2, _ = _setup(r2m_bed, R2MConfig(enabled=True, init="matched"), feedback=True)
    assert not fresh.calibrates(RewardQuery(exp2.prompts, exp2.responses, exp2.policy_hidden, exp2.policy_mask))


def test_update_logs_the_reward_scale(r2m_bed) -> None:
    cfg = R2MConfig(enabled=True, lr=1e-2)
    _, reward, exp, _ = _setup(r2m_bed, cfg)
    stats = _grebt(reward, cfg).update(exp, exp.policy_hidden)
    assert 0.0 <= stats["r2m/fusion_share"] <= 1.0
    assert stats["r2m/head_norm"] == pytest.approx(reward.model.head.weight.norm().item())
    assert stats["r2m/reward_std"] > 0 and stats["r2m/fusion_spread"] >= 0 and stats["r2m/rte_spread"] > 0


# ------------------------------------------------------------------ memory: chunks, dtype, no copies


@pytest.mark.parametrize("pair_choice", ["self", "random"])
def test_update_in_group_chunks_equals_the_whole_batch(r2m_bed, pair_choice) -> None:
    """reward.r2m.fusion_batch_size: GREBT is per group, so chunks of whole groups with accumulated gradients give
    the whole batch's loss and gradient; the fusion never sees more than one chunk's h."""
    grads, stats = {}, {}
    for size in (64, 2):  # all 8 rows at once; one group of K=2 per chunk
        cfg = R2MConfig(enabled=True, lr=1e-2, pair_choice=pair_choice, fusion_batch_size=size)
        _, reward, exp, _ = _setup(r2m_bed, cfg)
        rows, forward = [], reward.model.fusion.forward
        reward.model.fusion.forward = lambda rte, h, m: rows.append(h.shape[0]) or forward(rte, h, m)
        updater = _grebt(reward, cfg)
        stats[size] = updater.grebt_step(exp, exp.policy_hidden)
        grads[size] = [p.grad.clone() for p in updater.params]
        assert max(rows) == min(size, exp.batch_size)
        updater.optimizer.zero_grad()
        assert all(map(math.isfinite, updater.update(exp, exp.policy_hidden).values()))
    for a, b in zip(grads[2], grads[64]):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    for key in ("loss", "bt", "gre", "reward"):
        assert stats[2][key] == pytest.approx(stats[64][key], rel=1e-6), key


def test_h_is_stored_in_the_policys_dtype_and_minibatches_do_not_copy_it(r2m_bed) -> None:
    from r2m.experience.rollout import hidden_store

    assert R2MConfig().hidden_dtype == "policy"
    assert hidden_store(R2MConfig(), "bfloat16", "no").dtype == torch.bfloat16
    assert hidden_store(R2MConfig(), "float32", "bf16").dtype == torch.bfloat16  # autocast computes in bf16
    assert hidden_store(R2MConfig(), "float32", "no").dtype == torch.float32
    store = hidden_store(R2MConfig(hidden_dtype="float16", hidden_device="cpu"), "bfloat16", "bf16")
    assert store.dtype == torch.float16 and store.device == torch.device("cpu")
    _, _, exp, _ = _setup(r2m_bed, R2MConfig(enabled=True))
    mb = exp.select(torch.tensor([3, 1]))
    assert mb.policy_hidden is None and exp.policy_hidden is not None  # the policy loss never reads h
    assert torch.equal(mb.sequences, exp.sequences[[3, 1]])
