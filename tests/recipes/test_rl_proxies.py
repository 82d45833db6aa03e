"""The benchmark's reference rewards in a tiny world: the calibration ladder's gold-mixed proxy (reward.gold_mix) and
RM ensembles (reward.ensemble_seeds: world RMs of several world.rm_seed values), built by the RL run and used in a
step; and what is refused."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from r2m.config.parsing import load_config
from r2m.core.ensembles import combine_ensemble, moments, standardize
from r2m.errors import ConfigError
from r2m.experience.rewards import EnsembleReward, GoldMixedReward, ModelReward, RewardQuery
from r2m.recipes.pipeline import read_rows


def _calibration_rows(cfg, files, tok):
    rows = read_rows(cfg, "pref_eval", str(files.pref_eval), tok)[:256]
    return [r["prompt"] for r in rows for _ in (0, 1)], [x for r in rows for x in (r["chosen"], r["rejected"])]


def test_gold_mix_scales_gold_to_the_rm_on_the_calibration_rows(tiny, world_artifacts) -> None:
    """λ = 0.25: the run's reward is 0.75·RM + 0.25·ĝ, ĝ gold with the RM's mean and SD on both responses of the
    first 256 pairs of pref_eval (measured here again from the RM and the gold of those rows)."""
    from r2m.recipes.rl.build import build_run
    from r2m.recipes.rl.step import train_step

    cfg = load_config(None, [*tiny, "run.name=gold-mix", "reward.gold_mix=0.25"])
    s = build_run(cfg)
    mixed = s.reward_fn
    assert isinstance(mixed, GoldMixedReward) and isinstance(mixed.inner, ModelReward) and mixed.lam == 0.25
    prompts, responses = _calibration_rows(cfg, world_artifacts[2], s.models.tokenizer)
    calib = RewardQuery(prompts, responses)
    rm_m, gold_m = moments(mixed.inner(calib).scores), moments(mixed.gold(calib).scores)
    assert mixed.rm_moments == pytest.approx(rm_m) and mixed.gold_moments == pytest.approx(gold_m)
    q = RewardQuery(prompts[:6], responses[:6])
    rm, gold = mixed.inner(q).scores, mixed.gold(q).scores
    want = 0.75 * rm + 0.25 * (rm_m.mean + rm_m.std * (gold - gold_m.mean) / gold_m.std)
    torch.testing.assert_close(mixed(q).scores, want.float())
    m = train_step(s, 1)
    assert math.isfinite(m["reward/proxy"]) and math.isfinite(m["loss/policy"])


def test_gold_mix_zero_is_the_plain_rm(tiny, world_artifacts) -> None:
    from r2m.recipes.rl.build import build_run

    s = build_run(load_config(None, [*tiny, "run.name=gold-mix-0", "reward.gold_mix=0"]))
    assert type(s.reward_fn) is ModelReward  # λ = 0: no mix at all, bit-identical to a run without the field


def test_gold_mix_is_refused_outside_the_world_and_beside_r2m(tiny, world_artifacts, tmp_path) -> None:
    from r2m.recipes.rl.build import build_run

    with pytest.raises(ConfigError, match="reward.gold_mix: expected 0 with R2M"):
        load_config(None, ["reward.gold_mix=0.5", "reward.r2m.enabled=true"])
    with pytest.raises(ConfigError, match="reward.gold_mix: expected in \\[0, 1\\]"):
        load_config(None, ["reward.gold_mix=1.5"])
    policy, rm, files = world_artifacts
    shutil.copytree(policy, tmp_path / "policy")
    shutil.copytree(rm, tmp_path / "rm")
    lines = files.prompts.read_text().splitlines()
    user = tmp_path / "prompts.jsonl"  # the world's prompts without their '=>': not world prompts, no gold
    user.write_text("\n".join(line.replace(" =>", "") for line in lines if line.strip()) + "\n")
    with pytest.raises(ConfigError, match="reward.gold_mix: mixes in the gold-reward world's gold"):
        build_run(load_config(None, [*tiny, "reward.gold_mix=0.25", f"policy.path={tmp_path / 'policy'}",
                                     f"reward.path={tmp_path / 'rm'}", f"data.prompts={user}",
                                     f"data.pref_eval={files.pref_eval}"]))


@pytest.fixture(scope="module")
def ensemble_run(tiny, world_artifacts):
    """An RL run whose reward is the ensemble of the world RMs of rm_seed 11, 12 and 13 (worst case)."""
    from r2m.recipes.rl.build import build_run

    cfg = load_config(None, [*tiny, "run.name=ensemble", "reward.ensemble_seeds=[11,12,13]",
                             "reward.ensemble_mode=worst"])
    return cfg, build_run(cfg)


def test_ensemble_seeds_are_the_world_rms_of_those_seeds(tiny, ensemble_run) -> None:
    from r2m.recipes.pipeline import ensure_world_rm

    cfg, s = ensemble_run
    want = tuple(str(ensure_world_rm(load_config(None, [*tiny, f"world.rm_seed={seed}"]))) for seed in (11, 12, 13))
    assert s.inputs.reward_models == want and len(set(want)) == 3 and s.inputs.reward_model == want[0]
    assert isinstance(s.reward_fn, EnsembleReward) and len(s.reward_fn.members) == 3


def test_one_rl_step_with_a_three_rm_ensemble(tiny, world_artifacts, ensemble_run) -> None:
    """The ensemble's reward is the members' minimum after each is standardised on the calibration rows (mean 0,
    SD 1 there); the step trains on it."""
    from r2m.recipes.rl.step import train_step

    cfg, s = ensemble_run
    ens = s.reward_fn
    prompts, responses = _calibration_rows(cfg, world_artifacts[2], s.models.tokenizer)
    calib = RewardQuery(prompts, responses)
    for member, m in zip(ens.members, ens.moments):
        z = standardize(member(calib).scores, m)
        assert z.mean().item() == pytest.approx(0.0, abs=1e-5) and z.std(unbiased=False).item() == pytest.approx(1.0)
    q = RewardQuery(prompts[:8], responses[:8])
    z = torch.stack([standardize(mb(q).scores, m) for mb, m in zip(ens.members, ens.moments)])  # (3, 8)
    torch.testing.assert_close(ens(q).scores, z.min(0).values)
    assert (ens(q).scores <= combine_ensemble("mean", z) + 1e-6).all()
    m = train_step(s, 1)
    assert math.isfinite(m["reward/proxy"]) and math.isfinite(m["loss/policy"])


def test_ensembles_are_refused_with_r2m_and_with_one_member() -> None:
    with pytest.raises(ConfigError, match="R2M's fusion reads one RM's reward-token embedding"):
        load_config(None, ["reward.ensemble_seeds=[1,2]", "reward.r2m.enabled=true"])
    with pytest.raises(ConfigError, match="reward.ensemble: expected at least 2 members"):
        load_config(None, ["reward.ensemble=[/some/rm]"])
    with pytest.raises(ConfigError, match="reward.ensemble_seeds: expected empty when reward.ensemble"):
        load_config(None, ["reward.ensemble=[/a,/b]", "reward.ensemble_seeds=[1,2]"])
