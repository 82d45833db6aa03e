"""The PPO critic: initialisation from an RM or a policy, response alignment, gradients, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from r2m.config.models import ArchConfig
from r2m.errors import FormatVersionError, ModelError
from r2m.models.critic import ValueModel, build_critic, load_critic, save_critic
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.models.reward import RewardModel, last_token_index
from r2m.world.tokenizer import build_tokenizer

ARCH = ArchConfig(hidden_size=24, num_layers=1, num_heads=2, intermediate_size=48)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(policy_dir, rm_dir): a tiny random causal LM, and an RM (that backbone + a score head)."""
    root = tmp_path_factory.mktemp("critic")
    tok = build_tokenizer("rm")
    save_model(build_world_lm(ARCH, tok, seed=0), tok, root / "lm")
    tok = load_tokenizer(str(root / "lm"))
    torch.manual_seed(1)  # the score head is freshly initialised by from_pretrained
    rm = load_reward_model(str(root / "lm"), pad_token_id=tok.pad_token_id)
    with torch.no_grad():  # HF's init is N(0, 0.02): make the scores large enough to be telling
        rm.score.weight.normal_(0.0, 1.0)
    save_model(rm, tok, root / "rm")
    return str(root / "lm"), str(root / "rm")


def _batch(tok, prompts, responses):
    """Left-padded prompts | right-padded responses, as a rollout lays them out; returns (ids, mask, P)."""
    p = [tok(x, add_special_tokens=False)["input_ids"] for x in prompts]
    r = [tok(x, add_special_tokens=False)["input_ids"] for x in responses]
    P, R = max(map(len, p)), max(map(len, r))
    ids = torch.full((len(p), P + R), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (pi, ri) in enumerate(zip(p, r)):
        ids[i, P - len(pi): P] = torch.tensor(pi)
        mask[i, P - len(pi): P] = 1
        ids[i, P: P + len(ri)] = torch.tensor(ri)
        mask[i, P: P + len(ri)] = 1
    return ids, mask, P


PROMPTS = ["<bos> 3 1 2 =>", "<bos> 9 8 7 6 5 =>"]
RESPONSES = ["1 2 3 <eos>", "5 6 <eos>"]


def test_policy_critic_starts_at_zero(dirs) -> None:
    critic = build_critic("policy", dirs[0])
    assert isinstance(critic, ValueModel) and critic.value_head.in_features == ARCH.hidden_size
    tok = load_tokenizer(dirs[0])
    ids, mask, _ = _batch(tok, PROMPTS, RESPONSES)
    values = critic(ids, mask)
    assert values.shape == ids.shape and values.dtype == torch.float32
    assert torch.equal(values, torch.zeros_like(values))


def test_reward_critic_reproduces_the_rm_score(dirs) -> None:
    rm_dir = dirs[1]
    tok = load_tokenizer(rm_dir)
    rm = RewardModel(load_reward_model(rm_dir, pad_token_id=tok.pad_token_id), tok)
    critic = build_critic("reward", rm_dir)
    torch.testing.assert_close(critic.value_head.weight, rm.head.weight)
    assert torch.equal(critic.value_head.bias, torch.zeros(1))  # Llama's score head has no bias
    enc = rm.tokenize(PROMPTS, RESPONSES)  # right-padded
    with torch.no_grad():
        scores = rm(enc["input_ids"], enc["attention_mask"])  # (B,)
        values = critic(enc["input_ids"], enc["attention_mask"])  # (B, S)
    last = values[torch.arange(values.shape[0]), last_token_index(enc["attention_mask"])]
    assert scores.abs().min() > 1e-2  # a non-trivial comparison
    torch.testing.assert_close(last, scores)


def test_response_values_are_the_states_before_each_token(dirs) -> None:
    critic = build_critic("reward", dirs[1])
    tok = load_tokenizer(dirs[1])
    ids, mask, P = _batch(tok, PROMPTS, RESPONSES)
    S = ids.shape[1]
    with torch.no_grad():
        v = critic.response_values(ids, mask, P)  # (B, R)
        assert v.shape == (2, S - P)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        torch.testing.assert_close(v, critic(ids, mask, pos)[:, P - 1: -1])
        # the first value has seen only the prompt: it is the prompt's last-position value
        torch.testing.assert_close(v[:, 0], critic(ids[:, :P], mask[:, :P], pos[:, :P])[:, -1])
        # the value before response token t does not see token t, the one after it does
        t = 1
        changed = ids.clone()
        changed[:, P + t] = tok.convert_tokens_to_ids("9")
        v2 = critic.response_values(changed, mask, P)
        torch.testing.assert_close(v2[:, : t + 1], v[:, : t + 1])
        assert not torch.allclose(v2[:, t + 1], v[:, t + 1])
    with pytest.raises(ValueError, match="prompt_len"):
        critic.response_values(ids, mask, 0)


def test_gradients_reach_head_and_backbone(dirs) -> None:
    critic = build_critic("reward", dirs[1])
    tok = load_tokenizer(dirs[1])
    ids, mask, P = _batch(tok, PROMPTS, RESPONSES)
    critic.response_values(ids, mask, P).pow(2).sum().backward()
    assert critic.value_head.weight.grad.abs().sum() > 0
    assert critic.value_head.bias.grad.abs().sum() > 0
    backbone_grads = [p.grad for p in critic.backbone.parameters() if p.grad is not None]
    assert backbone_grads and sum(g.abs().sum() for g in backbone_grads) > 0


def test_save_load_round_trip(dirs, tmp_path) -> None:
    critic = build_critic("policy", dirs[0])
    with torch.no_grad():  # a head that differs from both initialisations
        critic.value_head.weight.normal_(generator=torch.Generator().manual_seed(0))
        critic.value_head.bias.fill_(0.3)
    out = save_critic(critic, tmp_path / "critic")
    assert sorted(p.name for p in out.iterdir()) == ["backbone", "critic.json", "value_head.safetensors"]
    loaded = load_critic(out)
    tok = load_tokenizer(dirs[0])
    ids, mask, P = _batch(tok, PROMPTS, RESPONSES)
    with torch.no_grad():
        assert torch.equal(loaded.response_values(ids, mask, P), critic.response_values(ids, mask, P))
    for (k, a), (k2, b) in zip(critic.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # saving again over an existing checkpoint replaces it
    save_critic(loaded, out)
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))


def test_errors(dirs, tmp_path) -> None:
    with pytest.raises(ValueError, match="source"):
        build_critic("value", dirs[0])
    with pytest.raises(ModelError, match="critic.json"):
        load_critic(tmp_path)
    out = save_critic(build_critic("policy", dirs[0]), tmp_path / "critic")
    meta = json.loads((out / "critic.json").read_text())
    (out / "critic.json").write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(FormatVersionError, match=r"critic\.json: this PPO critic directory has format version 0; "
                                                 r"this r2m reads version 1"):
        load_critic(out)

