"""One smoke test per CLI stage, in-process through ``main(argv)``, on the tiny world."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r2m.cli import main
from r2m.runtime.runlog import read_metrics


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _changed(a: dict, b: dict) -> list[str]:
    return [k for k in a if k in b and not torch.equal(a[k], b[k])]


def test_config_prints_yaml(capsys, tiny) -> None:
    assert main(["config", *tiny, "rl.k=3"]) == 0
    out = capsys.readouterr().out
    assert "k: 3" in out and "algorithm: rloo" in out


def test_bad_override_is_a_clear_error(capsys) -> None:
    assert main(["rl", "rl.alpha=0.5"]) == 2
    assert "rl.alpha: unknown key" in capsys.readouterr().err


def test_world_writes_plain_schemas(tmp_path, tiny, capsys) -> None:
    assert main(["world", *tiny, "--out", str(tmp_path / "w")]) == 0
    rows = [json.loads(l) for l in (tmp_path / "w" / "pref_train.jsonl").read_text().splitlines()]
    assert len(rows) == 400 and {"prompt", "chosen", "rejected"} <= set(rows[0])
    sft = json.loads((tmp_path / "w" / "sft.jsonl").read_text().splitlines()[0])
    assert {"prompt", "response"} <= set(sft)


def test_sft_stage_trains_and_saves(tmp_path, tiny, world_artifacts) -> None:
    from r2m.config.parsing import load_config
    from r2m.recipes.pipeline import fresh_world_lm

    root = str(tmp_path)
    _, _, files = world_artifacts
    args = [*tiny, f"run.root={root}", "run.name=sft", f"data.sft={files.sft}", "sft.max_steps=15"]
    assert main(["sft", *args]) == 0
    out = Path(root) / "sft" / "checkpoints" / "final"
    init, _ = fresh_world_lm(load_config(None, args), "policy")
    trained = _weights(out)
    assert len(_changed({k: v for k, v in init.state_dict().items()}, trained)) == len(trained)
    losses = [r["sft/loss"] for r in read_metrics(Path(root) / "sft" / "metrics.jsonl") if "sft/loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (Path(root) / "sft" / "config.yaml").exists()


def test_rm_stage_trains_head_and_backbone(tmp_path, tiny, world_artifacts, capsys) -> None:
    from r2m.recipes.pipeline import ensure_world_rm_backbone
    from r2m.config.parsing import load_config

    backbone = ensure_world_rm_backbone(load_config(None, tiny))
    args = [*tiny, f"run.root={tmp_path}", "run.name=rm", f"rm.init_from={backbone}",
            f"data.pref_train={world_artifacts[2].pref_train}", f"data.pref_eval={world_artifacts[2].pref_eval}"]
    assert main(["rm", *args]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    trained = _weights(tmp_path / "rm" / "checkpoints" / "final")
    base = _weights(backbone)
    assert "score.weight" in trained
    assert _changed(base, trained), "the RM backbone did not train"
    rows = read_metrics(tmp_path / "rm" / "metrics.jsonl")
    assert all(math.isfinite(r["rm/loss"]) for r in rows if "rm/loss" in r)
    assert any("rm/eval_acc" in r for r in rows)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "remax", "reinforce_pp", "ppo", "dr_grpo",
                                       "reinforce_pp_baseline"])
def test_rl_stage(tmp_path, tiny, world_artifacts, algorithm, capsys) -> None:
    policy_dir, _, _ = world_artifacts
    root = Path(tiny[-1].split("=", 1)[1])
    name = f"rl-{algorithm}-{tmp_path.name}"
    assert main(["rl", *tiny, f"run.name={name}", f"rl.algorithm={algorithm}", "rl.lr=1e-3"]) == 0
    run = root / name
    rows = read_metrics(run / "metrics.jsonl")
    train = [r for r in rows if "loss/policy" in r]
    assert len(train) == 2
    for r in train:
        for key in ("loss/policy", "reward/proxy", "reward/gold", "kl", "policy/grad_norm"):
            assert math.isfinite(r[key]), (key, r)
    evals = [r for r in rows if "eval/gold" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert _changed(_weights(policy_dir), _weights(run / "checkpoints" / "final"))
    assert (run / "config.yaml").exists() and (run / "plots" / "gold_vs_proxy.png").exists()
    if algorithm == "ppo":
        assert all(math.isfinite(r["loss/value"]) and "critic/explained_var" in r for r in train)
    if algorithm == "remax":
        assert all("time/greedy_baseline" in r for r in train)


@pytest.mark.parametrize("variant", [
    ["reward.r2m.enabled=true"],
    ["reward.r2m.enabled=true", "rl.algorithm=grpo", "reward.r2m.init=zero", "reward.r2m.ablation=no_gre"],
    ["reward.r2m.enabled=true", "reward.r2m.ablation=noise", "reward.r2m.hidden_device=cpu",
     "reward.r2m.hidden_dtype=bfloat16"],
    ["reward.r2m.enabled=true", "reward.r2m.ablation=frozen"],
    ["reward.baseline=iterative_head"],
    ["reward.baseline=pretrained_rm"],
    ["reward.r2m.enabled=true", "reward.r2m.init=matched", "rl.ratio_level=sequence", "rl.clip_ratio_c=3.0",
     "rl.clip_eps_high=0.28"],
], ids=["r2m", "grpo-zero-nogre", "noise-bf16-cpu", "frozen", "iterative_head", "pretrained_rm",
        "matched-sequence-dualclip"])
def test_rl_with_r2m_and_baselines(tmp_path, tiny, world_artifacts, variant) -> None:
    root = Path(tiny[-1].split("=", 1)[1])
    name = f"r2m-{tmp_path.name}"
    assert main(["rl", *tiny, f"run.name={name}", *variant]) == 0
    rows = read_metrics(root / name / "metrics.jsonl")
    train = [r for r in rows if "loss/policy" in r]
    trains_rm = "reward.r2m.ablation=frozen" not in variant and "reward.baseline=pretrained_rm" not in variant
    for r in train:
        assert math.isfinite(r["reward/proxy"]) and math.isfinite(r["kl"])
        assert ("r2m/grebt" in r) == trains_rm
        if trains_rm:
            assert all(math.isfinite(r[k]) for k in ("r2m/grebt", "r2m/bt", "r2m/gre", "r2m/omega"))
    final = root / name / "checkpoints" / "final"
    if "reward.r2m.enabled=true" in variant or "reward.baseline=iterative_head" in variant:
        assert (final / "r2m" / "r2m.safetensors").exists()
        assert any("rm_acc/r2m_after" in r for r in rows)
        meta = json.loads((final / "r2m" / "r2m.json").read_text())
        assert meta["base_rm_kind"] == "local" and not Path(meta["base_rm_relative"]).is_absolute()  # the run can move
        assert (final / "r2m" / meta["base_rm_relative"]).resolve() == Path(meta["base_rm"])
    if "reward.baseline=pretrained_rm" in variant:
        assert any(p.name.startswith("rm-pretrained-") for p in (root / "world").iterdir())


def test_rl_lr_schedule_with_warmup(tiny, world_artifacts) -> None:
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, "run.name=rl-cosine", "reward.source=gold", "rl.lr=1e-3", "rl.lr_schedule=linear",
                 "rl.warmup_steps=1", "rl.steps=3", "rl.eval_every=5"]) == 0
    lrs = [r["policy/lr"] for r in read_metrics(root / "rl-cosine" / "metrics.jsonl") if "policy/lr" in r]
    # one warm-up step from 0, then linear decay to 0 at step 3: 0, 1e-3, 5e-4
    assert lrs == pytest.approx([0.0, 1e-3, 5e-4])


def test_rl_on_gold_reward(tiny, world_artifacts) -> None:
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, "run.name=rl-gold", "reward.source=gold"]) == 0
    rows = read_metrics(root / "rl-gold" / "metrics.jsonl")
    # With reward.source=gold the proxy *is* gold.
    r = next(r for r in rows if "reward/gold" in r)
    assert r["reward/proxy"] == pytest.approx(r["reward/gold"])


def test_eval_subcommands(tiny, world_artifacts, capsys) -> None:
    assert main(["eval", "policy", *tiny]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["eval/exact_match"] <= 1.0 and math.isfinite(out["eval/gold"])
    assert main(["eval", "rm", *tiny]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 100 and 0.0 <= out["accuracy"] <= 1.0


def test_demo_prints_table_and_writes_plot(tiny, world_artifacts, capsys) -> None:
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["demo", *tiny, "run.name=demo", "demo.arms=[rloo, r2m, gold]", "demo.seeds=[0, 1]",
                 "demo.kl_budget=0.001"]) == 0
    out = capsys.readouterr().out
    for word in ("SFT", "RLOO (frozen proxy RM)", "RLOO + R2M", "RL on gold (ceiling)", "win vs SFT", "peak gold",
                 "proxy-gold", "s/step", "Table 3", "gold@KL0.001", " ± ", "over RL seeds [0, 1]",
                 "bit-identical only at the same thread count"):
        assert word in out, word
    assert (root / "demo" / "plots" / "gold_vs_proxy.png").stat().st_size > 10_000
    assert "gold@KL0.001" in (root / "demo" / "table.md").read_text()
    doc = json.loads((root / "demo" / "table.json").read_text())
    assert doc["seeds"] == [0, 1] and len(doc["per_seed"]["r2m"]["gold"]) == 2
    assert {(root / f"demo-{a}-s{s}").is_dir() for a in ("rloo", "r2m", "gold") for s in (0, 1)} == {True}
    # Seeds change RL sampling: the two seeds' runs differ.
    assert doc["per_seed"]["rloo"]["proxy"][0] != doc["per_seed"]["rloo"]["proxy"][1]


def test_metrics_have_one_row_per_step(tiny, world_artifacts) -> None:
    root = Path(tiny[-1].split("=", 1)[1])
    assert main(["rl", *tiny, "run.name=rows", "reward.r2m.enabled=true", "rl.steps=3", "rl.eval_every=2"]) == 0
    rows = read_metrics(root / "rows" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert "eval/gold" in rows[2] and "loss/policy" in rows[2] and "eval/gold" not in rows[1]
    assert "rm_acc/r2m_after" in rows[-1]


def test_eval_winrate_with_the_gold_judge(tiny, tmp_path, capsys) -> None:
    rows_p = [{"prompt": "<bos> 3 1 2 =>", "response": "1 2 3 <eos>"}, {"prompt": "<bos> 2 1 =>", "response": "1 2 <eos>"}]
    rows_r = [{"prompt": "<bos> 3 1 2 =>", "response": "1 2 <eos>"}, {"prompt": "<bos> 2 1 =>", "response": "1 2 <eos>"}]
    for name, rows in (("p.jsonl", rows_p), ("r.jsonl", rows_r)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "winrate", *tiny, "--policy-responses", str(tmp_path / "p.jsonl"),
                 "--ref-responses", str(tmp_path / "r.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["winrate/win_rate"] == pytest.approx(0.75)  # one win, one tie
    assert "winrate/lc_win_rate" in out


def test_analyze_hidden_states(tiny, world_artifacts, tmp_path, capsys) -> None:
    out = tmp_path / "analysis"
    assert main(["analyze", "hidden-states", *tiny, "--out", str(out)]) == 0
    numbers = json.loads((out / "hidden_states.json").read_text())
    assert numbers and any(p.suffix == ".png" for p in out.iterdir())


def test_overrides_may_follow_options_after_a_subcommand_positional():
    from r2m.cli import parse_args

    args = parse_args(["eval", "policy", "-c", "configs/world/rloo.yaml", "rl.k=3", "run.name=x"])
    assert args.what == "policy" and args.config == "configs/world/rloo.yaml"
    assert args.overrides == ["rl.k=3", "run.name=x"]
    with pytest.raises(SystemExit):
        parse_args(["eval", "policy", "-c", "configs/world/rloo.yaml", "--no-such-flag"])
