"""One RL step on stub parts (no model is loaded): the phases run in order, hand each other what they should, and
the step's metrics and the KL controller read the experience."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from r2m.config.root import Config
from r2m.core.kl_control import AdaptiveKLController
from r2m.experience.rollout import Experience, Rewards, Rollout
from r2m.experience.rewards import RewardQuery
from r2m.experience.sampling import PromptSet
from r2m.recipes.rl.setup import PromptSampler
from r2m.recipes.rl.state import Evaluation, Models, Progress, RLComponents
from r2m.recipes.rl.step import train_step
from r2m.runtime.distributed import Dist
from r2m.updates.policy import PolicyUpdate
from r2m.utils import PhaseTimer

N, K, R = 2, 2, 3  # prompts per step, samples per prompt, response columns
# (B, R) pi_old - pi_ref per token, and the response masks: the rows' sequence KLs are 0.7, 0.2, 0.0 and 1.1.
LOG_RATIO = torch.tensor([[0.5, 0.2, 9.0], [0.1, 0.1, 0.0], [0.0, 0.0, 0.0], [0.4, 0.4, 0.3]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])


def experience(step: int, scores: torch.Tensor) -> Experience:
    B = N * K
    old = torch.full((B, R), -1.3)
    return Experience(
        prompts=["p0", "p0", "p1", "p1"], responses=["a", "b", "c", "d"], sequences=torch.zeros(B, 2 + R).long(),
        attention_mask=torch.ones(B, 2 + R).long(), action_mask=MASK, prompt_len=2, old_logprobs=old,
        ref_logprobs=old - LOG_RATIO, scores=scores, advantages=torch.full((B, R), 0.7), returns=torch.zeros(B, R),
        policy_hidden=torch.ones(B, 1 + R, 5), policy_mask=torch.ones(B, 1 + R), rm_embeddings=torch.ones(B, 6),
        step=step, n=N, k=K)


class Parts:
    """The stubs of one run, recording each call as (phase, what it was handed)."""

    def __init__(self, scores: torch.Tensor, calibrate: bool = True):
        self.calls: list[str] = []
        self.scores, self.needs_calibration = scores, calibrate
        self.states = torch.full((N * K, 1 + R, 5), 2.0)  # what the policy update hands back

    # the experience maker
    def rollout(self, texts, ids, step, seeds):
        self.calls.append("rollout")
        assert len(texts) == N and seeds is None
        query = RewardQuery(list(texts), ["r"] * len(texts), step=step, group_size=K)
        return Rollout(texts, ids, None, None, None, query)

    def score(self, rollout):
        self.calls.append("score")
        assert rollout.query.rm_embeddings is not None or not self.needs_calibration
        return Rewards(self.scores, self.scores, None, None, None)

    def estimate(self, rollout, rewards, beta):
        self.calls.append("estimate")
        self.beta_seen = beta
        return experience(rollout.query.step, rewards.scores)

    # R2M's reward
    def calibrates(self, query):
        return self.needs_calibration

    def calibrate(self, query):
        self.calls.append("calibrate")
        self.needs_calibration = False
        return dataclasses.replace(query, rm_embeddings=torch.ones(N * K, 6))

    # the policy update, the scheduler, the generator's weight sync
    def update(self, exp, beta, keep_states=None):
        self.calls.append("policy_update")
        assert keep_states == self.keep_states
        return PolicyUpdate({"loss/policy": 0.25, "guard/skipped_minibatches": 0.0}, self.states)

    def lr_step(self):
        self.calls.append("lr_scheduler")

    def sync_weights(self, policy):
        self.calls.append("weight_sync")

    # GREBT
    def keep_states(self, states):
        return states

    def trainable_state(self):
        self.calls.append("r2m_before")
        return {"head.weight": torch.zeros(1)}

    def grebt_update(self, exp, policy_hidden):
        self.calls.append("grebt_update")
        assert policy_hidden is self.states  # the h the policy update kept
        return {"r2m/grebt": 0.5}


def components(parts: Parts, kl_ctl=None) -> RLComponents:
    cfg = dataclasses.replace(Config(), rl=dataclasses.replace(Config().rl, prompts_per_step=N, k=K))
    prompts = PromptSet([f"prompt {i}" for i in range(5)], [[i, i + 1] for i in range(5)], 0, 0)
    acc = SimpleNamespace(unwrap_model=lambda m: m, device=torch.device("cpu"))
    timer = PhaseTimer()
    maker = SimpleNamespace(rollout=parts.rollout, score=parts.score, estimate=parts.estimate, timer=timer, moments=None)
    grebt = SimpleNamespace(keep_states=parts.keep_states, update=parts.grebt_update,
                            model=SimpleNamespace(trainable_state=parts.trainable_state))
    reward = SimpleNamespace(reward_model=None, needs_policy_hidden=True)
    return RLComponents(
        cfg=cfg, inputs=SimpleNamespace(reward_model=None), dist=Dist(),
        models=Models(acc, None, torch.nn.Linear(1, 1), None), optimizer=SimpleNamespace(param_groups=[{"lr": 3e-6}]),
        lr_scheduler=SimpleNamespace(step=parts.lr_step), critic_optimizer=None, reward_fn=reward,
        r2m=SimpleNamespace(calibrates=parts.calibrates, calibrate=parts.calibrate),
        sampler=PromptSampler(5, 0, prompts), train_prompts=prompts, prompt_stats={"data/prompts_skipped": 0},
        generator=SimpleNamespace(sync_weights=parts.sync_weights), maker=maker,
        updater=SimpleNamespace(update=parts.update), grebt=grebt,
        kl_ctl=kl_ctl or AdaptiveKLController(0.1, target=0.25, horizon=100), timer=timer, run=None,
        evaluation=Evaluation(PromptSet([], [], 0, 0), reward, None), watch=None, progress=Progress())


def test_the_step_runs_its_phases_in_order_and_hands_each_its_input() -> None:
    parts = Parts(torch.tensor([0.3, -0.2, 1.0, 0.5]))
    s = components(parts)
    m1 = train_step(s, 1)
    assert parts.calls == ["rollout", "calibrate", "score", "r2m_before", "estimate", "policy_update",
                           "lr_scheduler", "weight_sync", "grebt_update"]
    assert s.progress.r2m_before is not None and parts.beta_seen == pytest.approx(0.1)
    parts.calls.clear()
    train_step(s, 2)  # calibrated once; Table 3's "before" kept from step 1
    assert parts.calls == ["rollout", "score", "estimate", "policy_update", "lr_scheduler", "weight_sync",
                           "grebt_update"]
    # The metrics: the experience's (hand-worked), the updates', the phases' times, the data counts at step 1.
    assert m1["kl/seq_sum"] == pytest.approx((0.7 + 0.2 + 0.0 + 1.1) / 4)
    assert m1["kl"] == pytest.approx((0.7 + 0.2 + 0.0 + 1.1) / (2 + 3 + 1 + 3))
    assert m1["reward/proxy"] == pytest.approx(0.4) and m1["reward"] == m1["reward/proxy"]  # and its TRL alias
    assert m1["response/length"] == pytest.approx(9 / 4)
    assert m1["loss/policy"] == 0.25 and m1["r2m/grebt"] == 0.5 and m1["policy/lr"] == 3e-6
    assert m1["kl/beta"] == pytest.approx(0.1) and m1["prompts/seen"] == N and m1["data/prompts_skipped"] == 0
    assert m1["r2m/hidden_mb"] == pytest.approx(4 * 4 * 5 * 4 / 2**20)
    assert {"time/update", "time/rm_update", "time/step"} <= set(m1) and not s.timer.totals
    assert s.progress.bad_steps == 0


def test_the_kl_controller_reads_the_steps_sequence_kl() -> None:
    """beta <- beta (1 + clip(KL/target - 1, ±0.2) B/horizon) with KL the mean sequence KL of the experience (0.5):
    0.1 (1 + 0.2 * 4/100) = 0.1008, whatever the metrics call it."""
    parts = Parts(torch.tensor([0.3, -0.2, 1.0, 0.5]))
    s = components(parts)
    train_step(s, 1)
    assert s.kl_ctl.value == pytest.approx(0.1 * (1 + 0.2 * 4 / 100), rel=1e-12)
    assert train_step(s, 2)["kl/beta"] == pytest.approx(0.1008, rel=1e-12)


def test_a_non_finite_experience_skips_the_updates() -> None:
    parts = Parts(torch.tensor([0.3, float("nan"), 1.0, 0.5]), calibrate=False)
    s = components(parts)
    m = train_step(s, 1)
    assert parts.calls == ["rollout", "score", "r2m_before", "estimate"]  # no update, no weight sync, no GREBT
    assert m["guard/skipped_step"] == 1.0 and m["guard/scores_nan"] == 1 and s.progress.bad_steps == 1
    assert s.kl_ctl.value == 0.1 and not s.timer.totals and m["guard/scores_min"] == pytest.approx(0.3)
