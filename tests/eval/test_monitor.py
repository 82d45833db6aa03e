"""r2m.eval.monitor: each signal of one evaluation, on a tiny random Llama and constructed samples."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from r2m.config.models import ArchConfig
from r2m.core.monitor import hidden_clustering, hidden_drift, rank_disagreement, token_drift
from r2m.errors import DataError
from r2m.eval.monitor import MonitorModels, PreviousEval, monitor_signals, response_states
from r2m.eval.policy import PolicySamples
from r2m.models.loading import build_world_lm
from r2m.experience.rewards import RewardOutput
from r2m.world.tokenizer import build_tokenizer

ARCH = ArchConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def lm():
    tok = build_tokenizer("policy")
    return build_world_lm(ARCH, tok, seed=3).eval(), tok


def _samples(tok, responses: list[list[int]], prompts: list[list[int]], proxy, vanilla=None, kl=0.3) -> PolicySamples:
    texts = [tok.decode(p) for p in prompts]
    return PolicySamples(prompts=texts, responses=[tok.decode(r) for r in responses], gold=None,
                         proxy=torch.tensor(proxy), vanilla=None if vanilla is None else torch.tensor(vanilla),
                         lengths=torch.tensor([float(len(r)) for r in responses]), kl=kl,
                         prompt_ids=prompts, response_ids=responses)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


class LengthRM:
    """A check RM that scores by response length (deterministic, so its ranks are known)."""

    needs_policy_hidden = False
    reward_model = None

    def __call__(self, query) -> RewardOutput:
        return RewardOutput(torch.tensor([0.7 * len(r) for r in query.responses]))


def test_response_states_pool_each_response_own_tokens(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, "<bos>3 1 2 ="), _ids(tok, "<bos>9 8 ="), _ids(tok, "<bos>5 4 7 6 =")]
    responses = [_ids(tok, "1 2 3<eos>"), _ids(tok, "8<eos>"), _ids(tok, "4 5 6 7 1<eos>")]
    got = response_states(model, prompts, responses, tok.pad_token_id, torch.device("cpu"), batch_size=2)
    for i, (p, r) in enumerate(zip(prompts, responses)):  # one row at a time: no padding at all
        with torch.no_grad():
            h = model(input_ids=torch.tensor([p + r]), output_hidden_states=True).hidden_states[-1][0]  # (S, D)
        want = h[len(p):].double().mean(0)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-4)


def test_every_signal_on_constructed_samples(lm) -> None:
    model, tok = lm
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.07 * torch.randn_like(p))
    prompts = [_ids(tok, "<bos>3 1 2 =")] * 2 + [_ids(tok, "<bos>9 8 =")] * 2 + [_ids(tok, "<bos>4 2 =")] * 2
    sft_resp = [_ids(tok, t) for t in ("1 2 3<eos>", "1 2<eos>", "8 9<eos>", "9 8<eos>", "2 4<eos>", "4<eos>")]
    pol_resp = [_ids(tok, t) for t in ("1 2 3 3 3<eos>", "1<eos>", "8 9 9<eos>", "8<eos>", "2 4 4 4<eos>", "2<eos>")]
    proxy = [0.7, 0.1, 0.3, 0.9, 0.2, 0.4]
    vanilla = [0.7, 0.2, 0.6, 0.1, 0.1, 0.3]
    sft = _samples(tok, sft_resp, prompts, [0.1] * 6, kl=0.0)
    pol = _samples(tok, pol_resp, prompts, proxy, vanilla, kl=0.3)
    models = MonitorModels(model, ref, tok.pad_token_id, torch.device("cpu"), samples_per_prompt=2,
                           check_fn=LengthRM(), fused=True, batch_size=4)
    out = monitor_signals(pol, sft, models, PreviousEval(proxy=0.2, kl=0.1)).metrics
    lengths = torch.tensor([float(len(r)) for r in pol_resp])
    check = rank_disagreement(torch.tensor(proxy).view(3, 2), (0.7 * torch.tensor(
        [float(len(r)) for r in pol.responses])).view(3, 2))
    assert out["monitor/check_disagreement"] == pytest.approx(check.value)
    # Hand-worked: group 0 proxy 0.7 > 0.1, longer first: agree; group 1 0.3 < 0.9, longer first: disagree;
    # group 2 0.2 < 0.4, longer first: disagree.
    assert check.value == pytest.approx(2 / 3)
    # Fused (proxy) vs vanilla: groups 0 and 2 agree, group 1 (0.3 < 0.9 vs 0.6 > 0.1) does not.
    assert out["monitor/fused_disagreement"] == pytest.approx(1 / 3)
    assert out["monitor/proxy_gain_per_kl"] == pytest.approx((sum(proxy) / 6 - 0.2) / (0.3 - 0.1))
    sft_len = sum(len(r) for r in sft_resp) / 6
    assert out["monitor/length_rel_change"] == pytest.approx(lengths.mean().item() / sft_len - 1)
    tokens = [torch.tensor(r) for r in pol_resp]
    sft_tokens = [torch.tensor(r) for r in sft_resp]
    pad = torch.nn.utils.rnn.pad_sequence
    mask = pad([torch.ones(len(r), dtype=torch.bool) for r in pol_resp], batch_first=True)
    sft_mask = pad([torch.ones(len(r), dtype=torch.bool) for r in sft_resp], batch_first=True)
    js = token_drift(pad(tokens, batch_first=True), mask, pad(sft_tokens, batch_first=True), sft_mask, len(tok)).js
    assert out["monitor/token_js"] == pytest.approx(js) and js > 0
    args = (prompts, pol_resp, tok.pad_token_id, torch.device("cpu"))
    states = response_states(model, *args)
    assert out["monitor/hidden_drift"] == pytest.approx(hidden_drift(states, response_states(ref, *args)).mean)
    assert out["monitor/hidden_drift"] > 0
    assert out["monitor/hidden_separation"] == pytest.approx(hidden_clustering(states).separation)
    assert out["time/monitor"] >= 0


def test_policy_equal_to_sft_gives_zero_drift(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, "<bos>3 1 2 =")] * 4
    resp = [_ids(tok, t) for t in ("1 2 3<eos>", "1 2<eos>", "3<eos>", "2 1 3<eos>")]
    s = _samples(tok, resp, prompts, [0.7, 0.1, 0.3, 0.2], kl=0.0)
    out = monitor_signals(s, s, MonitorModels(model, model, tok.pad_token_id, torch.device("cpu"), 2)).metrics
    assert out["monitor/length_rel_change"] == 0 and out["monitor/token_js"] == 0
    assert out["monitor/hidden_drift"] == pytest.approx(0, abs=1e-12)


def test_missing_signals_are_named_not_logged(lm) -> None:
    model, tok = lm
    prompts = [_ids(tok, "<bos>3 1 2 ="), _ids(tok, "<bos>9 8 ="), _ids(tok, "<bos>4 2 =")]
    resp = [_ids(tok, t) for t in ("1 2 3<eos>", "8 9<eos>", "2 4<eos>")]
    s = _samples(tok, resp, prompts, [0.7, 0.1, 0.3], vanilla=[0.1, 0.2, 0.3], kl=0.2)
    models = MonitorModels(model, model, tok.pad_token_id, torch.device("cpu"), samples_per_prompt=1,
                           check_fn=LengthRM(), fused=True)
    # The KL did not grow since the previous evaluation: the gain per KL is undefined (NaN), not logged.
    reading = monitor_signals(s, s, models, PreviousEval(0.3, 0.2))
    for key in ("monitor/check_disagreement", "monitor/fused_disagreement", "monitor/proxy_gain_per_kl"):
        assert key not in reading.metrics and key in reading.missing
    assert "samples_per_prompt=1" in reading.missing["monitor/check_disagreement"]
    assert all(math.isfinite(v) for v in reading.metrics.values())


def test_non_finite_scores_leave_the_rank_signals_out(lm) -> None:
    """A NaN proxy score (the numeric guard's business) must not stop the run from inside the monitor."""
    model, tok = lm
    prompts = [_ids(tok, "<bos>3 1 2 =")] * 4
    resp = [_ids(tok, t) for t in ("1 2 3<eos>", "1 2<eos>", "3<eos>", "2 1 3<eos>")]
    s = _samples(tok, resp, prompts, [0.7, float("nan"), 0.3, 0.2], vanilla=[0.1, 0.2, 0.3, 0.4])
    models = MonitorModels(model, model, tok.pad_token_id, torch.device("cpu"), 2, check_fn=LengthRM(), fused=True)
    reading = monitor_signals(s, s, models)
    assert "NaN" in reading.missing["monitor/check_disagreement"]
    assert "monitor/fused_disagreement" not in reading.metrics and "monitor/token_js" in reading.metrics


def test_samples_without_token_ids_are_refused(lm) -> None:
    model, tok = lm
    s = PolicySamples(["p"] * 3, ["r"] * 3, None, torch.zeros(3), None, torch.ones(3), 0.0)
    with pytest.raises(DataError, match="token ids"):
        monitor_signals(s, s, MonitorModels(model, model, tok.pad_token_id, torch.device("cpu"), 1))
