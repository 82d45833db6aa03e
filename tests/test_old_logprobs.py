"""rl.old_logprobs (issue 18): recompute is bit-identical to before; generation agrees with it to float rounding."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

from r2m.config import ArchConfig, OldLogprobs, RLConfig
from r2m.errors import ConfigError
from r2m.models.loading import build_world_lm
from r2m.rollout import feedback_states, generate, left_pad, response_forward
from r2m.world import build_tokenizer, format_prompt

sys.path.insert(0, str(Path(__file__).parent))
from old_logprobs_run import short_run  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "old_logprobs_recompute.json"
# Generation-time (KV cache) and recomputed (full attention) log-probs differ by float32 rounding only.
LOGPROB_TOL = 1e-5


def test_recompute_is_bit_identical_to_the_code_before_issue_18() -> None:
    # The fixture was written by tests/old_logprobs_run.py on the code before rl.old_logprobs existed.
    assert short_run(old_logprobs=OldLogprobs.RECOMPUTE) == json.loads(FIXTURE.read_text())


def _policy(layers: int = 2):
    tok = build_tokenizer("policy")
    arch = ArchConfig(hidden_size=32, num_layers=layers, num_heads=2, intermediate_size=64)
    return tok, build_world_lm(arch, tok, 0).eval()


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_generation_logprobs_and_states_agree_with_a_recomputed_pass(temperature) -> None:
    tok, policy = _policy()
    prompts = [tok(format_prompt(d))["input_ids"] for d in ([3, 1, 2], [9, 0, 4, 4, 8, 1], [5])]  # ragged
    ids, mask = left_pad([p for p in prompts for _ in range(3)], tok.pad_token_id)
    torch.manual_seed(0)
    gen = generate(policy, ids, mask, temperature=temperature, max_new_tokens=9, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id, with_logprobs=True, with_hidden=True)
    with torch.no_grad():
        fwd = response_forward(policy, gen.sequences, gen.attention_mask, gen.prompt_len, temperature, with_hidden=True)
    m = gen.action_mask.bool()
    assert m.sum() > m.shape[0] and (~m).any()  # several tokens per row, and rows that stopped early
    assert gen.logprobs.shape == fwd.logprobs.shape
    assert (gen.logprobs[m] - fwd.logprobs[m]).abs().max() < LOGPROB_TOL
    ref = feedback_states(fwd.hidden, gen.attention_mask)
    assert gen.hidden.shape == ref.hidden.shape
    keep = ref.mask.bool()
    assert torch.allclose(gen.hidden[keep], ref.hidden[keep], atol=1e-5, rtol=1e-5)


def test_a_short_run_with_generation_logprobs_matches_recompute_closely() -> None:
    rec = short_run(old_logprobs=OldLogprobs.RECOMPUTE)
    gen = short_run(old_logprobs=OldLogprobs.GENERATION)
    for a, b in zip(rec, gen):
        assert a.keys() == b.keys()
        # The first ratio starts at 1 either way: its clip fraction and approx KL agree.
        for key in ("policy/clip_frac", "policy/approx_kl", "reward/proxy", "kl", "loss/policy"):
            assert float.fromhex(a[key]) == pytest.approx(float.fromhex(b[key]), abs=1e-4), key


def test_generation_logprobs_are_refused_with_vllm() -> None:
    with pytest.raises(ConfigError, match="rl.old_logprobs"):
        RLConfig(old_logprobs=OldLogprobs.GENERATION, generator="vllm")
