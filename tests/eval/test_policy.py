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
