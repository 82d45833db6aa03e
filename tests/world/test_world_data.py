"""World datasets: demonstration kinds, mixture shares, labeller behaviour, streams, determinism."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from r2m.config.run import MixtureConfig, WorldConfig
from r2m.world.task import gold_reward_text, parse_prompt, target_tokens
from r2m.world.data import (_read_jsonl, label_probability, make_pairs, make_prompts, make_sft, WorldFiles,
                            generate_world, make_response)

SMALL = WorldConfig(n_sft=2000, n_pref_train=1000, n_pref_eval=200, n_rl_prompts=500, n_eval_prompts=64)
FILES = ("prompts", "eval_prompts", "sft", "pref_train", "pref_eval", "summary")


def _digit_cases(count: int = 400) -> list[list[int]]:
    """Random prompts of 1-8 digits plus the edge cases every kind must handle."""
    rng = np.random.default_rng(0)
    cases = [rng.integers(0, 10, size=int(rng.integers(1, 9))).tolist() for _ in range(count)]
    return cases + [[7], [4, 4, 4], [0, 0], [9, 0]]


def _body(tokens: list[str]) -> list[int]:
    """Digits of a response, after checking it ends in exactly one <eos>."""
    assert tokens[-1] == "<eos>" and tokens.count("<eos>") == 1
    return [int(t) for t in tokens[:-1]]


def _files_bytes(files: WorldFiles) -> dict[str, bytes]:
    return {name: getattr(files, name).read_bytes() for name in FILES}


# ------------------------------------------------------------------------------------------
# Demonstration kinds
# ------------------------------------------------------------------------------------------


def test_kind_correct_and_unsorted() -> None:
    rng = np.random.default_rng(1)
    for d in _digit_cases():
        assert make_response(rng, d, "correct") == target_tokens(d)
        assert _body(make_response(rng, d, "unsorted")) == d


def test_kind_truncated() -> None:
    rng = np.random.default_rng(2)
    drops = Counter()
    for d in _digit_cases():
        body = _body(make_response(rng, d, "truncated"))
        assert body == sorted(d)[: len(body)] and len(body) >= 1
        if len(d) >= 2:
            assert len(d) - len(body) in (1, 2)
            drops[len(d) - len(body)] += len(d) >= 3
        else:
            assert body == d  # one digit: nothing can be dropped
    assert drops[1] > 0 and drops[2] > 0


def test_kind_swap() -> None:
    rng = np.random.default_rng(3)
    for d in _digit_cases():
        body, s = _body(make_response(rng, d, "swap")), sorted(d)
        if len(set(d)) == 1:
            assert body == s
            continue
        diff = [i for i in range(len(s)) if body[i] != s[i]]
        assert len(diff) == 2 and diff[1] == diff[0] + 1
        assert body[diff[0]] == s[diff[1]] and body[diff[1]] == s[diff[0]]


def test_kind_random() -> None:
    rng = np.random.default_rng(4)
    seen = set()
    for d in _digit_cases():
        body = _body(make_response(rng, d, "random"))
        assert len(body) == len(d) and all(0 <= x <= 9 for x in body)
        seen.update(body)
    assert seen == set(range(10))


def test_kind_repeat() -> None:
    rng = np.random.default_rng(5)
    extras = set()
    for d in _digit_cases():
        body, s = _body(make_response(rng, d, "repeat")), sorted(d)
        extra = len(body) - len(d)
        assert 1 <= extra <= 3 and body[: len(d)] == s and body[len(d):] == [s[-1]] * extra
        extras.add(extra)
    assert extras == {1, 2, 3}


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        make_response(np.random.default_rng(0), [1, 2], "perfect")


# ------------------------------------------------------------------------------------------
# Mixture, SFT rows, prompts
# ------------------------------------------------------------------------------------------


def test_mixture_shares_on_30k() -> None:
    mix = MixtureConfig()
    counts = Counter(r["kind"] for r in make_sft(WorldConfig(n_sft=30000, mixture=mix)))
    total = sum(mix.weights())
    for kind, w in zip(mix.kinds(), mix.weights()):
        p = w / total
        assert abs(counts[kind] / 30000 - p) < 4 * math.sqrt(p * (1 - p) / 30000) + 1e-9, kind


def test_mixture_is_normalised() -> None:
    cfg = WorldConfig(n_sft=2000, mixture=MixtureConfig(correct=3, truncated=0, swap=0, unsorted=0, random=0, repeat=3))
    counts = Counter(r["kind"] for r in make_sft(cfg))
    assert set(counts) == {"correct", "repeat"}
    assert abs(counts["correct"] / 2000 - 0.5) < 0.05


def test_sft_rows() -> None:
    rows = make_sft(SMALL)
    assert len(rows) == SMALL.n_sft
    for r in rows:
        assert set(r) == {"prompt", "response", "kind", "gold"}
        assert SMALL.min_digits <= len(parse_prompt(r["prompt"])) <= SMALL.max_digits
        assert r["gold"] == pytest.approx(gold_reward_text(r["prompt"], r["response"], SMALL))
        if r["kind"] == "correct":
            assert r["gold"] == 1.0


def test_prompt_lengths_and_digits_cover_range() -> None:
    cfg = WorldConfig(min_digits=2, max_digits=4, n_rl_prompts=2000)
    digits = [parse_prompt(r["prompt"]) for r in make_prompts(cfg, "rl_prompts")]
    assert {len(d) for d in digits} == {2, 3, 4}
    assert {x for d in digits for x in d} == set(range(10))


def test_bad_split() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        make_prompts(SMALL, "train")
    with pytest.raises(ValueError, match="expected one of"):
        make_pairs(SMALL, "train")


# ------------------------------------------------------------------------------------------
# Preference pairs and the labeller
# ------------------------------------------------------------------------------------------


def _len(text: str) -> int:
    return len(text.split())


def test_label_probability() -> None:
    assert label_probability(1.0, 1.0, 4, 4, 0.25, 1.0) == 0.5
    assert label_probability(1.0, 0.75, 4, 4, 0.25, 0.0) == pytest.approx(1 / (1 + math.exp(-1)))
    assert label_probability(0.0, 0.0, 5, 3, 0.25, 1.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert label_probability(0.0, 1.0, 3, 9, 1e-9, 1e9) == 0.0  # huge arguments do not overflow
    assert label_probability(1.0, 0.0, 9, 3, 1e-9, 1e9) == 1.0


def test_pairs_schema_and_formula() -> None:
    rows = make_pairs(SMALL, "pref_train")
    assert len(rows) == SMALL.n_pref_train
    for r in rows:
        assert r["chosen"] != r["rejected"]
        assert r["gold_chosen"] == pytest.approx(gold_reward_text(r["prompt"], r["chosen"], SMALL))
        assert r["gold_rejected"] == pytest.approx(gold_reward_text(r["prompt"], r["rejected"], SMALL))
        expected = label_probability(r["gold_chosen"], r["gold_rejected"], _len(r["chosen"]), _len(r["rejected"]),
                                     SMALL.tau, SMALL.length_bias)
        assert r["p_chosen"] == pytest.approx(expected)


def test_labeller_calibrated() -> None:
    """Chosen-is-longer happens as often as the formula predicts (a z-test over unequal-length pairs)."""
    cfg = WorldConfig(n_pref_train=3000)
    hits, expected, var = 0, 0.0, 0.0
    for r in make_pairs(cfg, "pref_train"):
        lc, lr = _len(r["chosen"]), _len(r["rejected"])
        if lc == lr:
            continue
        (gl, ll, gs, ls) = ((r["gold_chosen"], lc, r["gold_rejected"], lr) if lc > lr
                            else (r["gold_rejected"], lr, r["gold_chosen"], lc))
        q = label_probability(gl, gs, ll, ls, cfg.tau, cfg.length_bias)  # P(longer is chosen)
        hits += lc > lr
        expected += q
        var += q * (1 - q)
    assert abs(hits - expected) < 4 * math.sqrt(var)


def test_labeller_coin_flip_when_uninformative(tmp_path: Path) -> None:
    cfg = WorldConfig(n_pref_train=2000, n_pref_eval=10, n_sft=10, n_rl_prompts=10, n_eval_prompts=10,
                      tau=1e9, length_bias=0.0)
    stats = json.loads(generate_world(cfg, tmp_path).summary.read_text())["pref_train"]
    assert abs(stats["frac_chose_higher_gold"] - 0.5) < 0.06
    assert abs(stats["frac_chose_longer"] - 0.5) < 0.06
    assert stats["mean_p_chosen"] == pytest.approx(0.5, abs=1e-6)


def test_labeller_always_longer_with_large_bias() -> None:
    cfg = WorldConfig(n_pref_train=1000, length_bias=50.0)
    rows = [r for r in make_pairs(cfg, "pref_train") if _len(r["chosen"]) != _len(r["rejected"])]
    assert len(rows) > 300
    assert all(_len(r["chosen"]) > _len(r["rejected"]) for r in rows)


def test_labeller_follows_gold_without_bias() -> None:
    cfg = WorldConfig(n_pref_train=1000, length_bias=0.0, tau=1e-6)
    rows = [r for r in make_pairs(cfg, "pref_train") if r["gold_chosen"] != r["gold_rejected"]]
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in rows)


def test_degenerate_mixture_fails_clearly() -> None:
    only_correct = MixtureConfig(correct=1, truncated=0, swap=0, unsorted=0, random=0, repeat=0)
    with pytest.raises(ValueError, match="non-identical preference pairs"):
        make_pairs(WorldConfig(n_pref_train=5, mixture=only_correct), "pref_train")


# ------------------------------------------------------------------------------------------
# Files: layout, determinism, independent streams
# ------------------------------------------------------------------------------------------


def test_generate_world_files(tmp_path: Path) -> None:
    files = generate_world(SMALL, tmp_path / "w")
    assert files == WorldFiles.in_dir(tmp_path / "w") and files.exists()
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted(
        ["prompts.jsonl", "eval_prompts.jsonl", "sft.jsonl", "pref_train.jsonl", "pref_eval.jsonl",
         "pref_policy.jsonl", "world.json"])
    assert len(_read_jsonl(files.prompts)) == SMALL.n_rl_prompts
    assert len(_read_jsonl(files.eval_prompts)) == SMALL.n_eval_prompts
    assert _read_jsonl(files.eval_prompts)[0].keys() == {"prompt"}
    assert len(_read_jsonl(files.sft)) == SMALL.n_sft
    assert len(_read_jsonl(files.pref_eval)) == SMALL.n_pref_eval
    summary = json.loads(files.summary.read_text())
    assert summary["counts"]["pref_train"] == SMALL.n_pref_train
    assert sum(summary["sft"]["kind_share"].values()) == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < summary["pref_train"]["frac_chose_longer"] <= 1.0
    assert not WorldFiles.in_dir(tmp_path / "empty").exists()


def test_deterministic(tmp_path: Path) -> None:
    a = _files_bytes(generate_world(SMALL, tmp_path / "a"))
    b = _files_bytes(generate_world(SMALL, tmp_path / "b"))
    assert a == b
    c = _files_bytes(generate_world(WorldConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1}), tmp_path / "c"))
    assert all(a[name] != c[name] for name in FILES)


def test_streams_independent_of_other_sizes(tmp_path: Path) -> None:
    base = _files_bytes(generate_world(SMALL, tmp_path / "a"))
    other = WorldConfig(**{**SMALL.__dict__, "n_rl_prompts": 37, "n_pref_train": 300})
    changed = _files_bytes(generate_world(other, tmp_path / "b"))
    for name in ("eval_prompts", "sft", "pref_eval"):
        assert changed[name] == base[name], name
    # Smaller budgets give a prefix of the same stream.
    assert base["prompts"].startswith(changed["prompts"])
    assert base["pref_train"].startswith(changed["pref_train"])


def test_policy_pairs_are_on_the_rl_prompts(tmp_path) -> None:
    files = generate_world(SMALL, tmp_path / "w")
    prompts = [json.loads(line)["prompt"] for line in files.prompts.read_text().splitlines()]
    pairs = [json.loads(line) for line in files.pref_policy.read_text().splitlines()]
    assert 0 < len(pairs) <= min(SMALL.n_pref_policy, len(prompts))
    assert {p["prompt"] for p in pairs} <= set(prompts[: SMALL.n_pref_policy])
    assert all(p["chosen"] != p["rejected"] for p in pairs)
