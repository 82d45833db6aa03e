"""rl.old_logprobs (issue 18): recompute matches the code before it (to float rounding since the log-prob pass and the
fusion changed shape); generation agrees with it to float rounding."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from r2m.recipes.rl.trl_aliases import TRL_ALIASES
import torch

from r2m.config.models import ArchConfig
from r2m.config.enums import OldLogprobs
from r2m.config.training import RLConfig
from r2m.errors import ConfigError
from r2m.models.loading import build_world_lm
from r2m.experience.sampling import generate
from r2m.models.feedback import feedback_states
from r2m.models.forward import left_pad
from r2m.models.logprobs import response_forward
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt

sys.path.insert(0, str(Path(__file__).parent))
from old_logprobs_run import short_run  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "old_logprobs_recompute.json"
# Generation-time (KV cache) and recomputed (full attention) log-probs differ by float32 rounding only.
LOGPROB_TOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    """The fixtures were made at one thread; float rounding depends on the thread count, so compare at one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _expected(path: Path) -> list:
    """A fixture's rows, or a skip when this machine cannot reproduce them bit for bit (float rounding
    depends on torch's version, the CPU's vector unit and the thread count)."""
    data = json.loads(path.read_text())
    env = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "threads": torch.get_num_threads()}
    if env != data["environment"]:
        pytest.skip(f"{path.name} was made under {data['environment']}, this is {env}; rerun its maker "
                    f"({data['made_by']}) on the code before issue 18 ({data['code']}) to compare here")
    return data["rows"]


NEW_KEYS = {*TRL_ALIASES, "reward/group_std"}
"""Metrics added after the fixtures (issue 17): TRL-named copies, and the within-group reward std they copy."""


ROUNDING = dict(rel=1e-3, abs=1e-6)
"""How far the fixtures' numbers may move: the log-prob pass (response-only logits, a selective log-softmax, padding
cut per chunk), the k/v-free fusion and the chunked RM and fusion passes compute the same quantities in other
orders. Measured against the code before them at one thread (CPU, AVX2): at most 1.3e-4 relative (on a 1e-7
approx KL) and 5e-8 absolute; the samples, gold rewards and Table 3 are identical."""


def _assert_rows_match(got: list[dict], expected: list[dict]) -> None:
    """The same rows and keys, strings equal and numbers (hex floats or plain) equal up to ``ROUNDING``."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.keys() == e.keys(), set(g) ^ set(e)
        for key, want in e.items():
            have = g[key]
            if isinstance(want, str) and want.startswith(("0x", "-0x", "inf", "-inf", "nan")):
                have, want = float.fromhex(have) if isinstance(have, str) else have, float.fromhex(want)
            if isinstance(want, float):
                assert have == pytest.approx(want, nan_ok=True, **ROUNDING), (g.get("step"), key)
            else:
                assert have == want, key


def test_recompute_matches_the_code_before_issue_18_to_float_rounding() -> None:
    # The fixture was written by tests/old_logprobs_run.py on the code before rl.old_logprobs existed.
    got = [{k: v for k, v in row.items() if k not in NEW_KEYS} for row in short_run(old_logprobs=OldLogprobs.RECOMPUTE)]
    _assert_rows_match(got, _expected(FIXTURE))


def test_a_cli_rl_run_with_r2m_matches_the_code_before_issue_18_to_float_rounding(tiny, world_artifacts) -> None:
    """Through the RL loop (the optimiser hook, R2M's h and its update): metrics.jsonl, time/* aside, to ``ROUNDING``."""
    from r2m.cli import main
    from r2m.config.parsing import load_config

    expected = _expected(Path(__file__).parent / "fixtures" / "rl_r2m_recompute_metrics.json")
    assert main(["rl", *tiny, "run.name=bitid-issue18", "reward.r2m.enabled=true"]) == 0
    root = Path(load_config(None, tiny).run.root)
    rows = [json.loads(line) for line in (root / "bitid-issue18" / "metrics.jsonl").read_text().splitlines()]
    got = [{k: float(v).hex() if isinstance(v, (int, float)) else v for k, v in sorted(r.items())
            if not k.startswith(("time/", "monitor/")) and k not in NEW_KEYS and isinstance(v, (int, float, str))}
           for r in rows]
    # monitor/* (issue 19) are new evaluation keys, and NEW_KEYS issue 17's TRL aliases, added after the fixture:
    # the training numbers are compared
    _assert_rows_match(got, expected)


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


class _HiddenReward:
    """A reward that reads R2M's h (as FeedbackReward does) and scores each row by its mean state."""

    needs_policy_hidden = True
    reward_model = None

    def __call__(self, query):
        from r2m.experience.rewards import RewardOutput

        m = query.policy_mask.unsqueeze(-1).float()  # (B, S-1, 1)
        return RewardOutput((query.policy_hidden * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1))


@pytest.mark.parametrize("rollout_batch_size", [0, 3])
def test_experience_from_generation_matches_recompute_with_r2m_h(rollout_batch_size) -> None:
    """pi_old's log-probs and h from the generation pass, in rollout chunks too, equal the recomputed ones."""
    from r2m.experience.rollout import ExperienceMaker
    from r2m.experience.sampling import tokenize_prompts

    tok, policy = _policy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    # Chunks of 3 rows: the second holds shorter prompts only (its P is smaller: padded on concatenation).
    prompts = tokenize_prompts(tok, [format_prompt(d) for d in ([9, 0, 4, 4, 8, 1], [3, 1, 2], [5])], 64, "truncate")
    exps = {}
    for mode in (OldLogprobs.RECOMPUTE, OldLogprobs.GENERATION):
        cfg = RLConfig(prompts_per_step=3, k=2, minibatches=1, max_new_tokens=7, temperature=0.7, old_logprobs=mode,
                       rollout_batch_size=rollout_batch_size)
        maker = ExperienceMaker(policy, ref, tok, _HiddenReward(), cfg, torch.device("cpu"))
        torch.manual_seed(3)
        exps[mode] = maker.make(prompts.texts, prompts.ids)
    rec, gen = exps[OldLogprobs.RECOMPUTE], exps[OldLogprobs.GENERATION]
    assert torch.equal(rec.sequences, gen.sequences)  # the same samples
    m = rec.action_mask.bool()
    assert (rec.old_logprobs[m] - gen.old_logprobs[m]).abs().max() < LOGPROB_TOL
    assert torch.equal(rec.policy_mask, gen.policy_mask)
    keep = rec.policy_mask.bool()
    assert torch.allclose(rec.policy_hidden[keep], gen.policy_hidden[keep], atol=1e-5, rtol=1e-5)
    assert torch.allclose(rec.scores, gen.scores, atol=1e-5)


def test_cli_refuses_generation_logprobs_with_vllm_as_documented(capsys) -> None:
    from r2m.cli import main

    assert main(["rl", "rl.generator=vllm", "rl.old_logprobs=generation", "run.root=/nonexistent-r2m-root"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("r2m: error: rl.old_logprobs:")
    assert err in (Path(__file__).resolve().parents[1] / "docs" / "ERRORS.md").read_text()
