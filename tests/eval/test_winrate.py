"""Raw and length-controlled win rates on constructed outcomes with known answers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from r2m.config.run import WorldConfig
from r2m.errors import DataError
from r2m.eval.judges import GoldJudge
from r2m.eval.winrate import (
    WinRate,
    judge_win_rate,
    length_controlled_win_rate,
    outcomes_from_scores,
    read_paired_responses,
    summarize_win_rate,
    win_rate_dict,
)


def _lengths(n: int, seed: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference lengths in [20, 40) and policy lengths shifted by Δ in [lo, hi] (skewed: mostly longer)."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randint(20, 40, (n,), generator=gen).double()
    return ref + torch.randint(lo, hi + 1, (n,), generator=gen).double(), ref


def test_outcomes_from_scores() -> None:
    out = outcomes_from_scores([1.0, 0.0, 2.0, float("nan")], [0.0, 1.0, 2.0, 1.0])
    assert out[:3] == [1.0, 0.0, 0.5] and math.isnan(out[3])


def test_equal_lengths_give_back_the_raw_rate_exactly() -> None:
    outcomes = [1, 1, 0, 0.5, 1, 0, 1]
    raw = sum(outcomes) / len(outcomes)
    assert length_controlled_win_rate(outcomes, [7] * 7, [7] * 7) == raw
    # Any constant length difference cannot be told apart from the preference itself: raw too.
    assert length_controlled_win_rate(outcomes, [9] * 7, [7] * 7) == raw
    w = summarize_win_rate(outcomes, [7] * 7, [7] * 7)
    assert w.win_rate == w.lc_win_rate == raw and w.ties == 1 and w.n == 7


def test_pure_length_bias_is_removed() -> None:
    # The judge only looks at length: longer wins, equal ties, shorter loses; the policy is usually longer.
    len_p, len_r = _lengths(2000, seed=0, lo=-5, hi=25)
    delta = len_p - len_r
    outcomes = (delta > 0).double() + 0.5 * (delta == 0).double()
    w = summarize_win_rate(outcomes, len_p, len_r)
    assert w.win_rate > 0.75
    assert w.lc_win_rate == pytest.approx(0.5, abs=0.05)


def test_noisy_length_bias_is_removed() -> None:
    len_p, len_r = _lengths(2000, seed=1, lo=-5, hi=25)
    delta = len_p - len_r
    gen = torch.Generator().manual_seed(2)
    p_win = torch.sigmoid(4 * torch.tanh(delta / delta.std(correction=0)))  # no preference at Δ = 0
    outcomes = (torch.rand(2000, generator=gen, dtype=torch.float64) < p_win).double()
    w = summarize_win_rate(outcomes, len_p, len_r)
    assert w.win_rate > 0.75 and w.lc_win_rate == pytest.approx(0.5, abs=0.06)


def test_preference_independent_of_length_is_preserved() -> None:
    len_p, len_r = _lengths(2000, seed=3, lo=-10, hi=30)
    gen = torch.Generator().manual_seed(4)
    outcomes = (torch.rand(2000, generator=gen, dtype=torch.float64) < 0.7).double()
    w = summarize_win_rate(outcomes, len_p, len_r)
    assert w.lc_win_rate == pytest.approx(w.win_rate, abs=0.03)
    assert w.lc_win_rate == pytest.approx(0.7, abs=0.04)


def test_recovers_the_generating_model() -> None:
    # Data drawn from the LC model itself: σ(θ) is estimated, whatever the length skew.
    len_p, len_r = _lengths(20000, seed=6, lo=-5, hi=25)
    delta = len_p - len_r
    theta, phi = 0.4, 2.0
    gen = torch.Generator().manual_seed(7)
    p_win = torch.sigmoid(theta + phi * torch.tanh(delta / delta.std(correction=0)))
    outcomes = (torch.rand(20000, generator=gen, dtype=torch.float64) < p_win).double()
    lc = length_controlled_win_rate(outcomes, len_p, len_r)
    assert lc == pytest.approx(torch.sigmoid(torch.tensor(theta)).item(), abs=0.02)
    assert outcomes.mean().item() > lc + 0.1


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        length_controlled_win_rate([1, 0], [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"outcomes in \[0, 1\]"):
        summarize_win_rate([2.0], [1], [1])


def test_degenerate_outcomes_do_not_diverge() -> None:
    len_p, len_r = _lengths(50, seed=5, lo=-5, hi=5)
    assert length_controlled_win_rate(torch.ones(50), len_p, len_r) == 1.0
    assert length_controlled_win_rate(torch.zeros(50), len_p, len_r) == 0.0
    assert length_controlled_win_rate(torch.full((50,), 0.5), len_p, len_r) == 0.5
    # Separable in length without ties at Δ = 0: the L2 on φ keeps the fit finite.
    outcomes = (len_p > len_r).double()
    lc = length_controlled_win_rate(outcomes, len_p, len_r)
    assert 0.0 < lc < 1.0 and math.isfinite(lc)


def test_nan_outcomes_are_dropped_and_counted() -> None:
    w = summarize_win_rate([1.0, float("nan"), 0.0, 0.5], [3, 4, 5, 6], [3, 3, 3, 3])
    assert (w.n, w.invalid, w.ties) == (3, 1, 1)
    assert w.win_rate == pytest.approx(0.5) and w.mean_length == pytest.approx(14 / 3)
    assert w.mean_length_ref == 3.0
    empty = summarize_win_rate([float("nan")], [1], [1])
    assert empty.n == 0 and math.isnan(empty.win_rate) and math.isnan(empty.lc_win_rate)


def test_judge_win_rate_with_gold_and_files(tmp_path) -> None:
    prompts = ["<bos> 3 1 2 =>", "<bos> 5 4 =>", "<bos> 9 8 7 =>"]
    policy = ["1 2 3 <eos>", "4 5 5 <eos>", "7 8 9 <eos>"]
    ref = ["1 2 <eos>", "4 5 <eos>", "7 8 9 <eos>"]
    for name, responses in (("policy", policy), ("ref", ref)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                                                        for p, r in zip(prompts, responses)))
    pairs = read_paired_responses(tmp_path / "policy.jsonl", tmp_path / "ref.jsonl")
    res = judge_win_rate(GoldJudge(WorldConfig()), *pairs)
    assert res.outcomes == [1.0, 0.0, 0.5]
    assert isinstance(res.summary, WinRate) and res.summary.win_rate == 0.5 and res.summary.ties == 1
    # Whitespace words by default, <eos> included.
    assert res.summary.mean_length == 4.0 and res.summary.mean_length_ref == pytest.approx(10 / 3)
    metrics = win_rate_dict(res.summary)
    assert metrics["winrate/win_rate"] == 0.5 and metrics["winrate/n"] == 3
    other = ["<bos> 1 =>", "<bos> 5 4 =>", "<bos> 9 8 7 =>"]
    (tmp_path / "other.jsonl").write_text("".join(json.dumps({"prompt": p, "response": "x"}) + "\n" for p in other))
    with pytest.raises(DataError, match="row 1: prompt differs"):
        read_paired_responses(tmp_path / "policy.jsonl", tmp_path / "other.jsonl")


def test_evaluation_samples_do_not_depend_on_a_random_reward(world_artifacts, tiny_cfg):
    """A reward that draws random numbers (R2M w/ Noise) must not change the evaluation samples."""
    import torch

    from r2m.eval.policy import sample_policy
    from r2m.models.loading import load_policy, load_tokenizer
    from r2m.experience.rewards import GoldReward, RewardOutput
    from r2m.experience.sampling import tokenize_prompts

    policy_dir, _, files = world_artifacts
    tok = load_tokenizer(str(policy_dir))
    policy = load_policy(str(policy_dir))
    prompts = [json.loads(line)["prompt"] for line in Path(files.eval_prompts).read_text().splitlines()]
    ps = tokenize_prompts(tok, prompts, 64, "truncate")
    cfg = replace(tiny_cfg.eval, batch_size=4)

    class Noisy:
        needs_policy_hidden = False

        def __call__(self, query):
            return RewardOutput(torch.randn(len(query.responses)))

    gold = GoldReward(tiny_cfg.world)
    a = sample_policy(policy, tok, ps.texts, ps.ids, cfg, 8, torch.device("cpu"), gold_fn=gold)
    b = sample_policy(policy, tok, ps.texts, ps.ids, cfg, 8, torch.device("cpu"), gold_fn=gold, reward_fn=Noisy())
    assert a.responses == b.responses and len(a.responses) > cfg.batch_size
