"""r2m.eval.policy.summarize: the evaluation metrics of a sample set, and its win rate against a baseline."""

from __future__ import annotations

import math

import pytest
import torch

from r2m.eval.policy import PolicySamples, summarize


def _samples(gold, lengths, proxy=None, prompts=("a", "b", "c")) -> PolicySamples:
    return PolicySamples(list(prompts), ["r"] * len(prompts), torch.tensor(gold), None if proxy is None else
                         torch.tensor(proxy), None, torch.tensor(lengths, dtype=torch.float32), 0.7)


def test_summarize_by_hand() -> None:
    s = _samples([1.0, 0.25, 0.5], [3, 5, 7], proxy=[0.9, 0.3, 0.6])
    out = summarize(s)
    assert math.isclose(out["eval/gold"], 1.75 / 3, rel_tol=1e-6)
    assert math.isclose(out["eval/length"], 5.0, rel_tol=1e-6)
    assert math.isclose(out["eval/exact_match"], 1 / 3, rel_tol=1e-6) and out["eval/kl"] == 0.7
    assert math.isclose(out["eval/proxy_gold_gap"], 1.8 / 3 - 1.75 / 3, rel_tol=1e-5)
    assert "eval/win_rate_vs_sft" not in out


def test_win_rate_against_the_baseline() -> None:
    out = summarize(_samples([1.0, 0.25, 0.5], [3, 5, 7]), _samples([0.5, 0.25, 0.75], [3, 5, 7]))
    assert math.isclose(out["eval/win_rate_vs_sft"], (1 + 0.5 + 0) / 3, rel_tol=1e-6)
    with pytest.raises(ValueError, match="same prompts"):
        summarize(_samples([1.0, 0.25, 0.5], [3, 5, 7]), _samples([1.0, 0.25, 0.5], [3, 5, 7], prompts=("x", "y", "z")))


# ------------------------------------------------------------------ sharding and the cap


class _Rank:
    """Rank ``rank`` of ``world`` processes; its gather returns the ranks' items rank-major (``before`` + its own +
    ``after``), as accelerate's gather_object does."""

    def __init__(self, rank: int, world: int, before=(), after=()):
        self.rank, self.num_processes, self.before, self.after, self.sent = rank, world, list(before), list(after), None

    enabled = property(lambda self: self.num_processes > 1)

    def gather_objects(self, items):
        self.sent = items
        return self.before + items + self.after


def test_evaluation_shared_out_over_ranks_equals_one_process() -> None:
    import copy

    from r2m.config.models import ArchConfig
    from r2m.config.jobs import EvalConfig
    from r2m.config.run import WorldConfig
    from r2m.eval.policy import sample_policy
    from r2m.experience.rewards import GoldReward
    from r2m.experience.sampling import tokenize_prompts
    from r2m.models.loading import build_world_lm
    from r2m.world.tokenizer import build_tokenizer
    from r2m.world.task import format_prompt

    tok = build_tokenizer("policy")
    policy = build_world_lm(ArchConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, 0)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01)  # a reference that differs: the KL is not 0
    ps = tokenize_prompts(tok, [format_prompt(d) for d in ([3, 1, 2], [9, 0, 4, 4], [5], [2, 2, 7], [8, 1])], 64,
                          "truncate")
    cfg = EvalConfig(batch_size=3, samples_per_prompt=2)  # 10 samples: batches of 3, 3, 3, 1
    args = (policy, tok, ps.texts, ps.ids, cfg, 6, torch.device("cpu"))
    kw = dict(ref=ref, gold_fn=GoldReward(WorldConfig()), pass_rows=2)
    one = sample_policy(*args, **kw)
    third = [_Rank(r, 3) for r in range(3)]
    for rank in third[1:]:
        sample_policy(*args, **kw, dist=rank)
    assert [len(r.sent) for r in third[1:]] == [1, 1]  # batches 1 and 2 (their repeats thrown away)
    rank0 = _Rank(0, 3, after=third[1].sent + third[2].sent)
    got = sample_policy(*args, **kw, dist=rank0)
    assert [p.index for p in rank0.sent] == [0, 3]
    assert got.responses == one.responses and got.response_ids == one.response_ids and got.prompts == one.prompts
    assert torch.equal(got.gold, one.gold) and torch.equal(got.lengths, one.lengths)
    assert got.kl == one.kl and one.kl != 0 and len(one.responses) == 10


def test_rank_batches_give_every_rank_the_same_number_of_passes() -> None:
    from r2m.eval.policy import batch_rows, rank_batches

    assert batch_rows(3, 3, 10) == ([9, 9, 9], 1)  # a short last batch repeats its own samples
    assert batch_rows(1, 3, 10) == ([3, 4, 5], 3) and batch_rows(0, 4, 4) == ([0, 1, 2, 3], 4)

    assert [rank_batches(4, _Rank(r, 3)) for r in range(3)] == [[0, 3], [1, -2], [2, -3]]
    assert rank_batches(5, _Rank(0, 1)) == [0, 1, 2, 3, 4]
    assert [rank_batches(1, _Rank(r, 2)) for r in range(2)] == [[0], [-1]]


def test_max_prompts_caps_and_counts(caplog) -> None:
    from r2m.config.jobs import EvalConfig
    from r2m.config.run import WorldConfig
    from r2m.eval.policy import cap_prompts
    from r2m.experience.sampling import PromptSet

    ps = PromptSet([f"p{i}" for i in range(5)], [[i] for i in range(5)], 0, 0)
    with caplog.at_level("WARNING", logger="r2m"):
        capped, dropped = cap_prompts(ps, 3)
    assert capped.texts == ["p0", "p1", "p2"] and capped.ids == [[0], [1], [2]] and dropped == 2
    assert "eval.max_prompts=3: evaluating the first 3 of 5 evaluation prompts (2 left out)" in caplog.text
    assert cap_prompts(ps, 0) == (ps, 0) and cap_prompts(ps, 5) == (ps, 0)
    assert WorldConfig().n_eval_prompts <= EvalConfig().max_prompts  # the world's eval set is never capped
