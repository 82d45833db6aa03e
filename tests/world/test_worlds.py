"""World presets (configs/world/worlds/), the labeller's ceiling, the blind world's RM view and RM seeds."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from r2m.ser.data import make_splits, split_sizes, status1_unreachable
from r2m.ser.rules import calibrate, status_evidence
from r2m.config.models import ArchConfig
from r2m.config.run import MixtureConfig, WorldConfig
from r2m.config.jobs import SERConfig
from r2m.config.parsing import config_hash, load_config, to_dict
from r2m.models.loading import build_world_lm, load_reward_model, load_tokenizer, save_model
from r2m.models.reward import RewardModel
from r2m.world.tokenizer import build_tokenizer
from r2m.world.task import format_prompt, parse_prompt
from r2m.world.ceiling import WorldCeilings, labeller_ceiling, world_ceilings
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


@pytest.fixture(scope="module")
def blind_ceilings() -> WorldCeilings:
    return world_ceilings(_world("blind"))


def test_blind_world_hides_what_decides_the_label(blind_ceilings) -> None:
    # The defining property, exact: through the RM's view (one prompt digit) the best rule is at least 5 points
    # below the full view's, which is the labeller's ceiling (the full view reads what the labeller reads).
    c = blind_ceilings
    assert c.full_view_best_accuracy == pytest.approx(c.labeller_ceiling, abs=1e-12)
    assert c.view_best_accuracy <= c.full_view_best_accuracy - 0.05
    assert c.n == _world("blind").n_pref_eval


def test_blind_world_policy_reads_the_hidden_digits() -> None:
    w = WorldConfig(**{**SMALL, **{k: getattr(_world("blind"), k) for k in ("rm_prompt_digits", "tau", "mixture")}})
    ptok, view = build_tokenizer("policy"), rm_prompt_view(w)
    unk = ptok.convert_tokens_to_ids("<unk>")
    for row in make_prompts(w):  # the RL prompts: the policy's input, and the gold reward's
        digits = parse_prompt(row["prompt"])
        ids = ptok(row["prompt"])["input_ids"]
        assert unk not in ids and ptok.convert_ids_to_tokens(ids)[1:-1] == [str(d) for d in digits]
        assert view(row["prompt"]).split()[1:-1] == [str(digits[0])] + ["<unk>"] * (len(digits) - 1)
    # Well-formed wrong answers (sorted, right length, wrong digits) are in the policy's demonstrations and in the
    # RM's pairs; only the hidden digits tell them from the correct answer.
    sft = make_sft(w)
    wrong = [r for r in sft if r["kind"] == "wrong_digit"]
    assert 0.15 < len(wrong) / len(sft) < 0.35
    for r in wrong:
        digits, body = parse_prompt(r["prompt"]), [int(t) for t in r["response"].split()[:-1]]
        assert body == sorted(body) and len(body) == len(digits) and body != sorted(digits)
    assert any("wrong_digit" in (r["kind_chosen"], r["kind_rejected"]) for r in make_pairs(w, "pref_train"))


def test_worlds_json_is_the_presets_ceilings(blind_ceilings) -> None:
    # docs/bench/worlds.json (r2m world --ceilings) holds the presets' numbers as the code computes them now.
    table = json.loads((WORLDS.parents[2] / "docs" / "bench" / "worlds.json").read_text())["worlds"]
    assert sorted(table) == sorted(p.stem for p in WORLDS.glob("*.yaml"))
    for name, row in table.items():
        c = blind_ceilings if name == "blind" else world_ceilings(_world(name))
        assert row == {"labeller_ceiling": round(c.labeller_ceiling, 4), "view_best_accuracy":
                       round(c.view_best_accuracy, 4), "full_view_best_accuracy": round(c.full_view_best_accuracy, 4)}
        if name != "blind":  # the other worlds' RMs read the whole prompt
            assert c.view_best_accuracy == c.full_view_best_accuracy == pytest.approx(c.labeller_ceiling)


def test_ser_headroom_world_has_a_small_seed_under_a_high_ceiling() -> None:
    # The cheap part of the headroom: a seed RM trained on a few dozen pairs, Full on a hundred times more, both
    # against clean labels. (The Loop 0 -> Full gap itself needs training: docs/WORLDS.md, 11.7-15.8 points.)
    cfg = load_config(WORLDS / "ser_headroom.yaml")
    sizes = split_sizes(cfg.world.n_pref_train, cfg.ser)
    seed_pairs = sizes.labelled - sizes.val
    assert seed_pairs <= 50 and sizes.rm >= 75 * seed_pairs
    default = WorldConfig()
    assert (labeller_ceiling(make_pairs(cfg.world, "pref_eval"), cfg.world).label_accuracy
            > labeller_ceiling(make_pairs(default, "pref_eval"), default).label_accuracy + 0.05)


@pytest.mark.parametrize("name", ["noisy", "ser_headroom"])
def test_ser_worlds_validation_set_serves_the_status_rule(name: str) -> None:
    # SER's status rule reads D_val: Status 1 needs min_status1 confident pairs (10% of D_val here, not out of
    # reach as with 12-13 pairs), and one pair moves validation accuracy by at most marginal_gain, so "a marginal
    # Status-1 gain" means at most one pair. Checked on the splits SER really makes (prompt groups, RM seeds).
    cfg = load_config(WORLDS / f"{name}.yaml")
    ser = cfg.ser
    for seed in (0, 1):
        world = dataclasses.replace(cfg.world, rm_seed=seed)
        n_val = len(make_splits(make_pairs(world, "pref_train"), ser, seed).val)
        assert n_val >= 10 * ser.min_status1 and 1 / n_val <= ser.marginal_gain, (name, seed, n_val)
        assert status1_unreachable(n_val, ser) is None
    assert "Status 1 cannot fire" in status1_unreachable(9, SERConfig())
    assert status1_unreachable(9, SERConfig(variant="release")) is None  # no status there


def _labeller_delta_p(world: WorldConfig, ser: SERConfig) -> float:
    """SER's Delta_p (Eq. 2, Platt-calibrated as SER calibrates an RM) of the labeller's own scores
    g / tau + lambda len on the world's held-out pairs: the labels' confidence, what a perfect RM would show."""
    rows = make_pairs(world, "pref_eval")
    score = lambda g, text: g / world.tau + world.length_bias * len(text.split())  # noqa: E731
    s_c = torch.tensor([score(r["gold_chosen"], r["chosen"]) for r in rows], dtype=torch.float64)
    s_r = torch.tensor([score(r["gold_rejected"], r["rejected"]) for r in rows], dtype=torch.float64)
    cal = calibrate(s_c, s_r, ser.calibration)
    return status_evidence(cal.probs(s_c), cal.probs(s_r), ser.tau_high, ser.tau_low).delta_p


def test_status2_needs_an_rm_as_confident_as_the_labels() -> None:
    # Why the paper's tau_Delta = 0.3 is rarely met here (docs/WORLDS.md): calibrated, Delta_p measures how sure
    # the RM may be. Even the labeller's own scores give 0.17 in `noisy` (below 0.3: out of reach) and 0.36 in
    # `length`; `ser_headroom`'s clean labels leave room (0.49), which an RM reaches near Full's accuracy.
    got = {n: _labeller_delta_p(_world(n), load_config(WORLDS / f"{n}.yaml").ser)
           for n in ("noisy", "length", "ser_headroom")}
    tau_delta = SERConfig().tau_delta
    assert got["noisy"] < tau_delta < got["length"] < got["ser_headroom"]
    assert got["noisy"] == pytest.approx(0.169, abs=0.002) and got["ser_headroom"] == pytest.approx(0.493, abs=0.002)


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


def test_cache_keys_follow_every_field_that_changes_the_data() -> None:
    # Every world field is in the key, whatever its value (none is left out at a "neutral" value).
    default = config_hash(WorldConfig())
    for name in ("rm_seed", "rm_prompt_digits"):
        assert config_hash({k: v for k, v in to_dict(WorldConfig()).items() if k != name}) != default, name
    for changed in (WorldConfig(rm_seed=3), WorldConfig(rm_prompt_digits=2),
                    WorldConfig(mixture=MixtureConfig(wrong_digit=0.33)), WorldConfig(n_sft=10)):
        assert config_hash(changed) != default, changed
    assert config_hash(MixtureConfig(wrong_digit=0.0)) == config_hash(to_dict(MixtureConfig()))
    # The SFT stages (policy, RM backbone) read only the demonstrations: every RM seed and every world preset whose
    # demonstrations are the default's shares them.
    assert config_hash(sft_world(WorldConfig(rm_seed=3, rm_prompt_digits=2))) == default
    for name in ("noisy", "ser_headroom"):
        assert config_hash(sft_world(_world(name))) == default, name
    # `blind` draws other demonstrations (its wrong-digit answers): its own SFT policy and RM backbone, and its own
    # data cache.
    assert config_hash(sft_world(_world("blind"))) != default
    assert make_sft(WorldConfig(**SMALL, mixture=MixtureConfig(wrong_digit=0.0))) == make_sft(WorldConfig(**SMALL))
    assert config_hash(sft_world(WorldConfig(n_sft=10))) != default


def test_rm_prompt_digits_is_checked() -> None:
    with pytest.raises(Exception, match="world.rm_prompt_digits"):
        WorldConfig(rm_prompt_digits=-1)


def test_world_ceilings_command(tmp_path, capsys) -> None:
    from r2m.cli import main

    out = tmp_path / "bench" / "worlds.json"
    assert main(["world", "--ceilings", str(out), "world.n_pref_eval=40"]) == 0
    table = json.loads(out.read_text())["worlds"]
    assert sorted(table) == ["blind", "length", "noisy", "ser_headroom"]
    small = dataclasses.replace(_world("blind"), n_pref_eval=40)
    assert table["blind"]["view_best_accuracy"] == round(world_ceilings(small).view_best_accuracy, 4)
    assert main(["world", "--ceilings", str(out), "-c", str(WORLDS / "blind.yaml")]) == 2
    assert "expected no -c/--config" in capsys.readouterr().err
