"""World presets (configs/world/worlds/), the labeller's ceiling, the blind world's RM view and RM seeds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from r2m.config import ArchConfig, WorldConfig, config_hash, load_config, to_dict
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.models.reward import RewardModel
from r2m.world import build_tokenizer, format_prompt
from r2m.world.ceiling import labeller_ceiling
from r2m.world.data import label_probability, make_pairs, make_prompts, make_sft
from r2m.world.seeds import sft_world, rm_seed
from r2m.world.view import mask_prompt, rm_prompt_view

WORLDS = Path(__file__).resolve().parents[2] / "configs" / "world" / "worlds"
SMALL = dict(n_sft=50, n_pref_train=60, n_pref_eval=40, n_rl_prompts=30, n_eval_prompts=8, n_pref_policy=20)


def _world(name: str) -> WorldConfig:
    return load_config(WORLDS / f"{name}.yaml").world


def test_every_preset_loads_and_is_documented() -> None:
    names = sorted(p.stem for p in WORLDS.glob("*.yaml"))
    assert names == ["blind", "length", "noisy", "ser_headroom"]
    doc = (WORLDS.parents[2] / "docs" / "WORLDS.md").read_text()
    for n in names:
        assert f"`{n}`" in doc, n


def test_length_world_is_the_default_world() -> None:
    assert config_hash(_world("length")) == config_hash(WorldConfig())
    assert _world("length").length_bias > 0


def test_noisy_world_has_no_length_term_and_few_noisy_labels() -> None:
    w = _world("noisy")
    assert w.length_bias == 0.0
    assert w.n_pref_train < WorldConfig().n_pref_train / 5 and w.tau > WorldConfig().tau
    # No length term: two answers of equal gold are a coin flip whatever their lengths.
    assert label_probability(0.7, 0.7, 9, 3, w.tau, w.length_bias) == 0.5
    c = labeller_ceiling(make_pairs(w, "pref_eval"), w)
    assert c.gold_agreement < 0.75  # noisy: the labels follow gold well under 80% of the time


def test_blind_world_masks_prompt_digits_for_the_rm_only() -> None:
    w = _world("blind")
    assert w.rm_prompt_digits >= 1 and rm_prompt_view(w) is not None
    assert rm_prompt_view(WorldConfig()) is None  # the default RM reads the whole prompt


def test_ser_headroom_world_has_a_small_seed_under_a_high_ceiling() -> None:
    cfg = load_config(WORLDS / "ser_headroom.yaml")
    assert cfg.world.n_pref_train * cfg.ser.seed_frac <= 150
    default = WorldConfig()
    assert (labeller_ceiling(make_pairs(cfg.world, "pref_eval"), cfg.world).label_accuracy
            > labeller_ceiling(make_pairs(default, "pref_eval"), default).label_accuracy + 0.03)


# ---------------------------------------------------------------------------------------------- ceiling


def _row(g_c: float, g_r: float, len_c: int, len_r: int) -> dict:
    return {"chosen": " ".join(["1"] * len_c), "rejected": " ".join(["1"] * len_r), "gold_chosen": g_c,
            "gold_rejected": g_r}


def test_ceiling_hand_worked() -> None:
    w = WorldConfig(tau=0.7, length_bias=0.3)
    # x = (0.9 - 0.2)/0.7 + 0.3*(2 - 4) = 1.0 - 0.6 = 0.4: p = sigmoid(0.4) = 0.598688
    # x = (0.1 - 0.8)/0.7 + 0.3*(5 - 1) = -1.0 + 1.2 = 0.2: p = 0.549834
    # x = (0.5 - 0.5)/0.7 + 0.3*(2 - 5) = -0.9: p = 0.289050, best 1 - p = 0.710950
    rows = [_row(0.9, 0.2, 2, 4), _row(0.1, 0.8, 5, 1), _row(0.5, 0.5, 2, 5)]
    c = labeller_ceiling(rows, w)
    assert c.label_accuracy == pytest.approx((0.598688 + 0.549834 + 0.710950) / 3, abs=1e-6)
    # gold agreement over the two pairs of unequal gold: 0.598688 and 1 - 0.549834
    assert c.gold_agreement == pytest.approx((0.598688 + 0.450166) / 2, abs=1e-6)
    assert c.n == 3
    assert math.isnan(labeller_ceiling([_row(0.5, 0.5, 2, 2)], w).gold_agreement)
    with pytest.raises(ValueError, match="at least one pair"):
        labeller_ceiling([], w)


def test_ceiling_matches_the_labels_drawn() -> None:
    # The ceiling is an expectation over the labeller's draws: the rule "predict the likelier order" scored
    # against the actual labels of many pairs lands near it.
    w = WorldConfig(**{**SMALL, "n_pref_eval": 3000}, tau=0.7)
    rows = make_pairs(w, "pref_eval")
    hits = sum(r["p_chosen"] >= 0.5 for r in rows) / len(rows)
    assert hits == pytest.approx(labeller_ceiling(rows, w).label_accuracy, abs=0.03)


# ---------------------------------------------------------------------------------------------- blind view


def test_mask_prompt_hand_worked() -> None:
    assert mask_prompt("<bos> 3 1 2 7 =>", 2) == "<bos> 3 1 <unk> <unk> =>"
    assert mask_prompt("<bos> 3 1 =>", 5) == "<bos> 3 1 =>"
    with pytest.raises(ValueError, match="not a world prompt"):
        mask_prompt("hello", 2)
    with pytest.raises(ValueError, match=">= 1"):
        mask_prompt("<bos> 3 =>", 0)


@pytest.fixture(scope="module")
def rm(tmp_path_factory) -> RewardModel:
    tok = build_tokenizer("rm")
    lm = build_world_lm(ArchConfig(hidden_size=24, num_layers=1, num_heads=2, intermediate_size=48), tok, seed=1)
    out = tmp_path_factory.mktemp("rm") / "lm"
    save_model(lm, tok, out)
    tok = load_tokenizer(str(out))
    torch.manual_seed(7)
    return RewardModel(load_reward_model(str(out), pad_token_id=tok.pad_token_id), tok)


def test_blind_rm_never_sees_the_hidden_digits_but_the_policy_does(rm) -> None:
    a, b = format_prompt([3, 1, 2, 7]), format_prompt([3, 1, 9, 0])  # differ only after the 2nd digit
    resp = ["1 2 3 7 <eos>", "1 2 3 7 <eos>"]
    rm.prompt_view = rm_prompt_view(WorldConfig(rm_prompt_digits=2))
    try:
        enc = rm.tokenize([a, b], resp)
        assert torch.equal(enc["input_ids"][0], enc["input_ids"][1])
        unk = rm.tokenizer.convert_tokens_to_ids("<unk>")
        assert (enc["input_ids"][0] == unk).sum() == 2
        s = rm.score_texts([a, b], resp)
        assert s[0].item() == s[1].item()
    finally:
        rm.prompt_view = None
    assert not torch.equal(*rm.tokenize([a, b], resp)["input_ids"])  # without the view the RM tells them apart
    ptok = build_tokenizer("policy")
    assert ptok(a)["input_ids"] != ptok(b)["input_ids"]  # the policy reads every digit


# ---------------------------------------------------------------------------------------------- RM seeds


def test_rm_seed_varies_the_rm_pairs_only() -> None:
    base, other = WorldConfig(**SMALL), WorldConfig(**SMALL, rm_seed=7)
    assert rm_seed(base) == base.seed and rm_seed(other) == 7
    assert make_pairs(base, "pref_train") != make_pairs(other, "pref_train")
    assert make_pairs(base, "pref_eval") == make_pairs(other, "pref_eval")
    assert make_sft(base) == make_sft(other)
    assert make_prompts(base) == make_prompts(other)
    assert make_pairs(WorldConfig(**SMALL, rm_seed=base.seed), "pref_train") == make_pairs(base, "pref_train")


def test_new_world_fields_keep_the_default_cache_keys() -> None:
    # The keys the default world had before rm_seed / rm_prompt_digits existed (those fields left out).
    old = {k: v for k, v in to_dict(WorldConfig()).items() if k not in ("rm_seed", "rm_prompt_digits")}
    assert config_hash(WorldConfig()) == config_hash(old) == "2f525fb922"
    assert config_hash(WorldConfig(rm_seed=3)) != config_hash(WorldConfig())
    # The SFT stages (policy, RM backbone) are shared by every RM seed and every world preset.
    assert config_hash(sft_world(WorldConfig(rm_seed=3, rm_prompt_digits=2))) == config_hash(WorldConfig())
    for name in ("noisy", "blind", "ser_headroom"):
        assert config_hash(sft_world(_world(name))) == config_hash(WorldConfig()), name
    assert config_hash(sft_world(WorldConfig(n_sft=10))) != config_hash(WorldConfig())


def test_rm_prompt_digits_is_checked() -> None:
    with pytest.raises(Exception, match="world.rm_prompt_digits"):
        WorldConfig(rm_prompt_digits=-1)
