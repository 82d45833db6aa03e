"""SER: learning status, filters, losses and splits on hand-made numbers; the loop end to end on the tiny world."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r2m.cli import main
from r2m.config.enums import Calibration, KeepLoop, PairLoss
from r2m.errors import ConfigError
from r2m.config.training import RMConfig
from r2m.config.jobs import SERConfig
from r2m.config.parsing import load_config
from r2m.core.losses import margin_pairwise_loss
from r2m.recipes.pipeline import ensure_world_rm_backbone
from r2m.runtime.runlog import read_metrics
from r2m.updates.supervised import num_steps
from r2m.recipes.ser import last_loop
from r2m.reports.ser_report import STATE_FILE
from r2m.ser.rules import (LearningStatus, ScoreCalibration, Selection, StatusEvidence, calibrate, filter_pairs,
                           kept_loop, learning_status, pair_loss, platt_scale, release_filter, status_evidence)
from r2m.ser.data import make_splits, pseudo_quality
from r2m.recipes.ser_rm import steps_config

T = torch.tensor
# Thresholds exact in binary, so that the boundary cases test the comparison and not float rounding.
HI, LO, TD, MG = 0.625, 0.375, 0.25, 0.125
S1, S2, STOP = LearningStatus.STATUS1, LearningStatus.STATUS2, LearningStatus.STOP


def _status(p1, p2, min_status1: int = 2, previous=None, gain=float("nan")) -> LearningStatus:
    ev = status_evidence(T(p1), T(p2), HI, LO, previous, gain)
    return learning_status(ev, TD, min_status1, MG).status


# ------------------------------------------------------------------------------ learning status (Eq. 2-3)


def test_status1_when_enough_pairs_are_confidently_right() -> None:
    assert _status([0.9, 0.8, 0.5], [0.1, 0.2, 0.5]) is S1
    ev = status_evidence(T([0.9, 0.8, 0.5]), T([0.1, 0.2, 0.5]), HI, LO)
    assert (ev.confident, ev.n, ev.previous) == (2, 3, None) and math.isnan(ev.gain)


def test_too_few_confident_pairs_fall_through_to_status2() -> None:
    # one confident pair < min_status1=2; Delta_p = (0.8 + 0.0) / 2 = 0.4 >= 0.25
    assert _status([0.9, 0.5], [0.1, 0.5]) is S2


def test_status2_on_mean_absolute_difference() -> None:
    # No pair has one answer > 0.625 and the other < 0.375, but the scores are spread apart.
    assert _status([0.9, 0.2], [0.5, 0.6]) is S2
    assert status_evidence(T([0.9, 0.2]), T([0.5, 0.6]), HI, LO).delta_p == pytest.approx(0.4)


def test_confidently_wrong_pairs_are_not_status1() -> None:
    # p1 is the labelled chosen answer: the RM is confident and wrong, |diff| still counts for Eq. 2.
    assert _status([0.1, 0.2], [0.9, 0.8]) is S2


def test_stop_when_neither_condition_holds() -> None:
    assert _status([0.55, 0.5, 0.45], [0.5, 0.5, 0.5]) is STOP
    assert _status([], []) is STOP


def test_status_boundaries() -> None:
    assert _status([0.75], [0.5], min_status1=1) is S2  # Delta_p == tau_delta: >=
    assert _status([0.625, 0.625], [0.25, 0.25], min_status1=1) is S2  # p1 == tau_high: not >
    assert _status([0.75], [0.375], min_status1=1) is S2  # p2 == tau_low: not <


def test_status1_then_status2_then_stop() -> None:
    """SER Sec. 3.1: Status 1 first, Status 2 once a Status-1 loop's gain is marginal, then Stop. Fails on the old rule,
    which chose Status 1 whenever min_status1 pairs were confident (the count only grows, so Status 2 never fired)."""
    confident = [0.9] * 6 + [0.5] * 2, [0.1] * 6 + [0.5] * 2  # 6 confident of 8, Delta_p = 0.6
    assert _status(*confident) is S1  # the seed RM
    assert _status(*confident, previous=S1, gain=0.25) is S1  # a real gain: stay in Status 1
    assert _status(*confident, previous=S1, gain=0.125) is S2  # gain <= marginal_gain: shift, though 6 are confident
    assert _status(*confident, previous=S1, gain=-0.0625) is S2  # a loss is marginal too
    assert _status(*confident, previous=S2, gain=0.25) is S2  # Status 2 while Delta_p >= tau_delta ...
    assert _status([0.6, 0.4], [0.4, 0.6], previous=S2) is STOP  # ... Delta_p = 0.2 < 0.25: Stop
    assert _status([0.9, 0.6], [0.1, 0.55], previous=S1, gain=0.0) is S2  # Delta_p = (0.8 + 0.05) / 2
    assert _status([0.9, 0.5], [0.6, 0.5], previous=S1, gain=0.0) is STOP  # Delta_p = 0.15: nowhere to shift


def test_decisions_state_their_evidence() -> None:
    ev = StatusEvidence(confident=27, delta_p=0.35, n=98, previous=S1, gain=0.0)
    decision = learning_status(ev, 0.3, 10, 0.01)
    assert decision.status is S2
    assert "gain +0.0000 <= marginal_gain 0.01" in decision.reason and "delta_p 0.350 >= tau_delta 0.3" in decision.reason
    seed = learning_status(ev._replace(previous=None, gain=float("nan")), 0.3, 10, 0.01)
    assert seed.status is S1 and "27/98 confident >= min_status1 10" in seed.reason


def test_the_gain_is_the_last_loops_validation_gain() -> None:
    history = [{"status": "seed", "ser/val_acc": 0.7}, {"status": "status1", "ser/val_acc": 0.8},
               {"status": "status2", "ser/val_acc": 0.75}]
    assert last_loop(history[:1]).status is None and math.isnan(last_loop(history[:1]).gain)
    assert last_loop(history[:2]).status is S1 and last_loop(history[:2]).gain == pytest.approx(0.1)
    assert last_loop(history).status is S2 and last_loop(history).gain == pytest.approx(-0.05)
    assert last_loop([{"status": "seed", "ser/val_acc": 0.7}, {"status": "release", "ser/val_acc": 0.9}]).status is None


# ------------------------------------------------------------------------------ calibration (scale-free probabilities)


def test_platt_scale_hand_worked() -> None:
    # 3 of 4 pairs right, |d| = 0.7: Platt's target t = 5/6 gives sigmoid(0.7 / T) = (3 t + 1 (1 - t)) / 4 = 2/3,
    # so T = 0.7 / logit(2/3) = 0.7 / ln 2.
    d = torch.tensor([0.7, 0.7, -0.7, 0.7], dtype=torch.float64)
    assert platt_scale(d) == pytest.approx(0.7 / math.log(2), rel=1e-9)
    # every pair right: finite (t = 5/6 for N = 4 gives sigmoid(0.7 / T) = 5/6, T = 0.7 / ln 5)
    assert platt_scale(d.abs()) == pytest.approx(0.7 / math.log(5), rel=1e-9)
    # no better than chance: no temperature makes the scores informative
    assert platt_scale(T([0.7, -0.7])) == math.inf and platt_scale(T([])) == math.inf


def test_platt_scale_minimises_the_smoothed_likelihood() -> None:
    gen = torch.Generator().manual_seed(3)
    d = torch.randn(37, generator=gen, dtype=torch.float64) * 1.3 + 0.7  # inexact, mostly right
    n = len(d)
    t = (n + 1) / (n + 2)

    def nll(temp: float) -> float:  # the paper-style loop: one pair at a time
        total = 0.0
        for x in d.tolist():
            p = 1 / (1 + math.exp(-x / temp))
            total -= t * math.log(p) + (1 - t) * math.log(1 - p)
        return total / n

    best = platt_scale(d)
    assert all(nll(best) < nll(best * f) for f in (0.9, 0.99, 1.01, 1.1))


def test_calibration_centres_on_the_median() -> None:
    chosen, rejected = T([0.7, 2.9]), T([-1.3, 0.1])  # sorted -1.3, 0.1, 0.7, 2.9: median (0.1 + 0.7) / 2
    assert calibrate(chosen, rejected, Calibration.MEDIAN) == pytest.approx(ScoreCalibration(0.4, 1.0))
    assert calibrate(chosen, rejected, Calibration.SIGMOID) == ScoreCalibration(0.0, 1.0)
    cal = calibrate(chosen, rejected, Calibration.PLATT)
    assert cal.centre == pytest.approx(0.4) and cal.scale == pytest.approx(platt_scale(chosen - rejected))
    assert cal.probs(T([0.4])).item() == pytest.approx(0.5)  # a median answer
    assert ScoreCalibration(0.4, math.inf).probs(T([-3.0, 5.0])).tolist() == [0.5, 0.5]


def test_status_is_invariant_to_the_score_scale() -> None:
    """BT fixes neither offset nor spread: a * s + b is the same RM. With ``platt`` its probabilities, and so its
    status evidence, are unchanged; with the raw sigmoid (the old behaviour) they are not."""
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(50, generator=gen) + 0.6
    r = torch.randn(50, generator=gen)

    def evidence(a: float, b: float, mode: Calibration):
        cal = calibrate(a * c + b, a * r + b, mode)
        return status_evidence(cal.probs(a * c + b), cal.probs(a * r + b), 0.55, 0.45)

    base = evidence(1.0, 0.0, Calibration.PLATT)
    for a, b in [(3.7, 0.0), (0.3, 1.3), (2.9, -5.3)]:
        moved = evidence(a, b, Calibration.PLATT)
        assert moved.confident == base.confident and moved.delta_p == pytest.approx(base.delta_p, rel=1e-5)
    assert evidence(3.7, 1.3, Calibration.SIGMOID) != evidence(1.0, 0.0, Calibration.SIGMOID)


def test_seed_trains_a_number_of_steps() -> None:
    rmc = RMConfig(batch_size=64, epochs=2.0)
    for n in (19, 390, 6400):  # any seed size: exactly the steps asked, whatever rm.epochs gives
        cfg = steps_config(rmc, n, 100)
        assert num_steps(n, cfg.batch_size, cfg.epochs, cfg.max_steps) == 100
    assert SERConfig().seed_steps == 50


# ------------------------------------------------------------------------------ which loop is kept


def test_kept_loop() -> None:
    val = [0.7, 0.8, 0.8, 0.75]
    assert kept_loop(val, KeepLoop.LAST, "max_loops").index == 3
    best = kept_loop(val, KeepLoop.BEST_VAL, "max_loops")
    assert best.index == 1 and "0.800" in best.reason  # the earliest of the tied best


# ------------------------------------------------------------------------------ filters (Eq. 4) and release OR


def _kept(sel: Selection) -> tuple[list[int], list[bool]]:
    return sel.index.tolist(), sel.first_is_chosen.tolist()


def test_status1_filter_keeps_confident_pairs_in_either_order() -> None:
    s1, s2 = T([0.9, 0.2, 0.7, 0.5, 0.8]), T([0.1, 0.8, 0.5, 0.5, 0.3])
    assert _kept(filter_pairs(s1, s2, LearningStatus.STATUS1, HI, LO, TD)) == ([0, 1, 4], [True, False, True])


def test_status2_filter_keeps_large_gaps_oriented() -> None:
    s1, s2 = T([0.9, 0.2, 0.7, 0.5, 0.75]), T([0.5, 0.7, 0.5, 0.5, 0.5])
    # gaps 0.4, 0.5, 0.2, 0 and 0.25 (== delta: not >)
    assert _kept(filter_pairs(s1, s2, LearningStatus.STATUS2, HI, LO, TD)) == ([0, 1], [True, False])


def test_stop_and_empty_filters() -> None:
    s1, s2 = T([0.9, 0.5]), T([0.1, 0.5])
    stop = filter_pairs(s1, s2, LearningStatus.STOP, HI, LO, TD)
    assert stop.index.numel() == 0 and stop.first_is_chosen.numel() == 0
    middling = filter_pairs(T([0.5, 0.55]), T([0.45, 0.5]), LearningStatus.STATUS1, HI, LO, TD)
    assert middling.index.shape == (0,) and middling.index.dtype == torch.long


def test_release_filter_joins_both_rules_and_swaps_mirrored_pairs() -> None:
    s1 = T([0.7, 0.3, 0.9, 0.5, 0.2, 0.5])
    s2 = T([0.3, 0.7, 0.6, 0.4, 0.6, 0.5])
    # 0: confident; 1: its mirror; 2: gap 0.3 > 0.25 only; 3: neither; 4: mirrored gap; 5: tie
    assert _kept(release_filter(s1, s2, HI, LO, TD)) == ([0, 1, 2, 4], [True, False, True, False])


def test_release_filter_is_the_union_of_the_two_status_filters() -> None:
    gen = torch.Generator().manual_seed(0)
    s1, s2 = torch.rand(500, generator=gen), torch.rand(500, generator=gen)
    union = set(filter_pairs(s1, s2, LearningStatus.STATUS1, 0.55, 0.45, 0.3).index.tolist()) | \
        set(filter_pairs(s1, s2, LearningStatus.STATUS2, 0.55, 0.45, 0.3).index.tolist())
    sel = release_filter(s1, s2, 0.55, 0.45, 0.3)
    assert set(sel.index.tolist()) == union
    assert torch.equal(sel.first_is_chosen, s1[sel.index] > s2[sel.index])


# ------------------------------------------------------------------------------ losses (Eq. 5)


def test_hinge_values() -> None:
    assert margin_pairwise_loss(T([1.0, 0.2]), T([0.0, 0.5]), 0.5).item() == pytest.approx(0.4)  # (0 + 0.8) / 2
    # pair_loss applies the hinge to sigmoid scores: raw 0 vs 0 is 0.5 vs 0.5, short of the margin by 0.3
    assert pair_loss(T([0.0]), T([0.0]), PairLoss.HINGE, 0.3).item() == pytest.approx(0.3)
    logit = math.log(0.9 / 0.1)
    chosen = T([logit], requires_grad=True)
    loss = pair_loss(chosen, T([-logit]), PairLoss.HINGE, 0.5)  # 0.9 - 0.1 = 0.8 >= 0.5: no loss, no gradient
    loss.backward()
    assert loss.item() == 0.0 and chosen.grad.item() == 0.0
    assert pair_loss(T([0.0]), T([0.0]), PairLoss.BT, 0.5).item() == pytest.approx(math.log(2))


# ------------------------------------------------------------------------------ splits, pseudo-labels, config


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "gold_chosen": 1.0, "gold_rejected": float(i % 2)}
            for i in range(n)]


def test_splits_are_disjoint_and_hide_labels() -> None:
    splits = make_splits(_rows(400), SERConfig(), seed=0)
    assert (len(splits.sft), len(splits.rm), len(splits.ppo)) == (120, 260, 20)
    assert (len(splits.val), len(splits.seed), len(splits.unlabeled)) == (8, 31, 221)
    prompts = [r["prompt"] for part in (splits.sft, splits.val, splits.seed, splits.ppo) for r in part]
    prompts += splits.unlabeled.prompts
    assert len(set(prompts)) == 400
    pool = splits.unlabeled
    for p, a, first in zip(pool.prompts, pool.first, pool.label_first.tolist()):
        assert a == (f"c{p[1:]}" if first else f"r{p[1:]}")
    assert 0 < pool.label_first.float().mean() < 1  # the answer order is random
    assert make_splits(_rows(400), SERConfig(), seed=0).unlabeled.first == pool.first  # deterministic


def test_val_prompts_are_disjoint_from_the_seed() -> None:
    """D_val is split by prompt: a prompt that recurs (as the world's short prompts do) is never in both D_val and
    the seed's training pairs. Fails on the old split by rows (val = the first rows, seed = the next)."""
    rows = [{"prompt": f"p{i % 40}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(2000)]  # 50 pairs a prompt
    splits = make_splits(rows, SERConfig(seed_frac=0.3), seed=0)
    val, seed = {r["prompt"] for r in splits.val}, {r["prompt"] for r in splits.seed}
    assert val and seed and not val & seed
    labelled = len(splits.val) + len(splits.seed)
    assert labelled == round(0.3 * len(splits.rm))  # every labelled pair is in one of the two: nothing dropped
    assert len(splits.val) >= round(0.2 * labelled)  # at least val_frac, whole prompt groups
    with pytest.raises(ConfigError, match="ser.seed_frac: the labelled seed"):
        make_splits([{**r, "prompt": "p"} for r in rows], SERConfig(), seed=0)  # one prompt: no seed pair left


def test_pseudo_label_quality() -> None:
    splits = make_splits(_rows(400), SERConfig(), seed=0)
    pool = splits.unlabeled
    idx = torch.arange(10)
    right = pseudo_quality(pool, Selection(idx, pool.label_first[idx]))
    assert right.label_acc == 1.0 and right.gold_acc == 1.0
    wrong = pseudo_quality(pool, Selection(idx, ~pool.label_first[idx]))
    assert wrong.label_acc == 0.0
    assert math.isnan(pseudo_quality(pool, Selection(idx[:0], idx[:0].bool())).label_acc)


@pytest.mark.parametrize("override, message", [
    ("ser.rm_frac=0.5", "ser.rm_frac: expected sft_frac + rm_frac + ppo_frac = 1"),
    ("ser.seed_frac=1.0", "ser.seed_frac: expected in (0, 1)"),
    ("ser.tau_low=0.6", "ser.tau_low: expected 0 < tau_low <= tau_high < 1"),
    ("ser.margin=2", "ser.margin: expected in (0, 1]"),
    ("ser.variant=both", "ser.variant: expected one of"),
    ("ser.min_status1=0", "ser.min_status1: expected >= 1"),
    ("ser.marginal_gain=2", "ser.marginal_gain: expected in [-1, 1]"),
    ("ser.seed_steps=-1", "ser.seed_steps: expected >= 0"),
    ("ser.calibration=zscore", "ser.calibration: expected one of"),
    ("ser.retrain_data=seed", "ser.retrain_data: expected one of"),
    ("ser.keep=first", "ser.keep: expected one of"),
])
def test_config_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_release_variant_retrains_with_log_sigmoid() -> None:
    assert load_config(None, ["ser.variant=release"]).ser.retrain_loss is PairLoss.BT
    assert load_config(None, []).ser.retrain_loss is PairLoss.HINGE


# ------------------------------------------------------------------------------ end to end (tiny world)

# Thresholds loose enough that the tiny seed RM (a few steps) always finds pairs: Status 1 at the
# sigmoid midpoint, and a Status-2 fallback on any gap.
LOOSE = ["ser.tau_high=0.5", "ser.tau_low=0.5", "ser.tau_delta=0.001", "ser.delta=0.0", "ser.min_status1=1",
         "ser.seed_steps=4"]


def _state(root: Path, name: str) -> dict:
    return json.loads((root / name / STATE_FILE).read_text())


def test_ser_end_to_end_and_resume(tiny, world_artifacts, capsys) -> None:
    root = Path(next(a for a in tiny if a.startswith("run.root=")).split("=", 1)[1])
    args = [*tiny, *LOOSE, "ser.rl.steps=2"]
    # First sitting: Loop 0, one self-labelling loop, Full; no PPO yet.
    assert main(["ser", *args, "run.name=ser-e2e", "ser.max_loops=1", "ser.ppo=false"]) == 0
    out = capsys.readouterr().out
    assert "SER Table 1" in out and "Loop 0 (seed)" in out and "Full dataset" in out and "SER (loop 1)" in out
    run = root / "ser-e2e"
    loop0 = run / "loop-0" / "checkpoints" / "final" / "model.safetensors"
    mtime = loop0.stat().st_mtime_ns

    # Second sitting: run.resume=auto with max_loops=2 continues with loop 2, then PPO on its RM.
    assert main(["ser", *args, "run.name=ser-e2e", "ser.max_loops=2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed after loop 1" in out and "SER (loop 2)" in out and "win vs SFT" in out
    assert loop0.stat().st_mtime_ns == mtime  # loop 0 was not retrained
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["ser/train_steps"] == 4  # ser.seed_steps, not rm.epochs over the 31 seed pairs (1 step)
    assert all(math.isfinite(r["ser/val_delta_p"]) and r["ser/val_n"] > 0 for r in rows[1:])  # each decision's evidence
    assert all(0 <= r["ser/test_acc"] <= 1 and r["ser/selected"] > 0 for r in rows)
    assert all(0 <= r["ser/pseudo_acc"] <= 1 and r["ser/status"] in (1.0, 2.0) for r in rows[1:])
    for plot in ("accuracy_per_loop.png", "data_per_loop.png"):
        assert (run / "plots" / plot).stat().st_size > 0
    state = _state(root, "ser-e2e")
    assert state["loop"] == 2 and state["stop"]["reason"] == "max_loops"
    assert all("confident" in h["decision"] or "delta_p" in h["decision"] for h in state["history"][1:])
    table = (run / "table.md").read_text()
    assert "RM (hinge loss)" in table and "## Decisions" in table and "- kept: loop 2, the last completed loop" in table
    assert state["ppo"]["rm_dir"] == "loop-2/checkpoints/final" and "eval/win_rate_vs_sft" in state["ppo"]
    assert (root / "ser-e2e-ppo" / "checkpoints" / "final").exists()

    # The same two loops in one sitting give the same RM: the resumed loop continued exactly.
    assert main(["ser", *args, "run.name=ser-straight", "ser.max_loops=2", "ser.ppo=false"]) == 0
    a = load_file(str(run / "loop-2" / "checkpoints" / "final" / "model.safetensors"))
    b = load_file(str(root / "ser-straight" / "loop-2" / "checkpoints" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # A state written under another loop config is refused.
    capsys.readouterr()
    assert main(["ser", *args, "run.name=ser-e2e", "ser.max_loops=3", "ser.tau_high=0.6", "--resume"]) == 2
    assert "run.resume" in capsys.readouterr().err


def test_ser_stops_on_status_with_lora(tiny, world_artifacts, capsys) -> None:
    root = Path(next(a for a in tiny if a.startswith("run.root=")).split("=", 1)[1])
    args = ["ser", *tiny, "run.name=ser-stop", "ser.ppo=false", "ser.lora.enabled=true", "ser.min_status1=100000",
            "ser.tau_delta=0.99"]
    assert main(args) == 0
    state = _state(root, "ser-stop")
    assert state["stop"]["reason"] == "stop_status" and state["loop"] == 0
    assert "SER (loop 0)" in capsys.readouterr().out
    # LoRA is merged away: the saved RM is a plain checkpoint whose head and backbone both moved.
    saved = load_file(str(root / "ser-stop" / "loop-0" / "checkpoints" / "final" / "model.safetensors"))
    assert "score.weight" in saved and not any("lora" in k for k in saved)
    base = load_file(str(ensure_world_rm_backbone(load_config(None, tiny)) / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[q], base[q])  # the LoRA delta of q_proj was merged in
    k = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(saved[k], base[k])  # k_proj carries no adapter: untouched


def test_ser_release_variant(tiny, world_artifacts) -> None:
    root = Path(next(a for a in tiny if a.startswith("run.root=")).split("=", 1)[1])
    # min_status1 that could never be met: the release variant does not look at the status at all.
    assert main(["ser", *tiny, "run.name=ser-release", "ser.ppo=false", "ser.variant=release", "ser.max_loops=1",
                 "ser.delta=0.0", "ser.min_status1=100000"]) == 0
    rows = read_metrics(root / "ser-release" / "metrics.jsonl")
    assert [r["ser/status"] for r in rows] == [0.0, 3.0]  # seed, then the OR filter
    assert rows[1]["ser/selected"] > 0


def test_ser_one_loss_seed_pairs_and_kept_loop(tiny, world_artifacts, monkeypatch) -> None:
    """Loop 0, the loops and Full all train with ser.loss; filtered_plus_seed adds the seed's labelled pairs; the kept
    loop is Table 1's SER row. Fails on the old code (Loop 0 and Full were always BT; no ser.retrain_data)."""
    import r2m.recipes.ser as ser_mod

    root = Path(next(a for a in tiny if a.startswith("run.root=")).split("=", 1)[1])
    losses = {}
    real_fit = ser_mod.fit_rm

    def spy(cfg, acc, init, pairs, loss, out_dir, name, seed, steps=0):
        losses[name.rsplit("/", 1)[-1]] = PairLoss(loss)
        return real_fit(cfg, acc, init, pairs, loss, out_dir, name, seed, steps)

    monkeypatch.setattr(ser_mod, "fit_rm", spy)
    args = ["ser", *tiny, *LOOSE, "run.name=ser-plus-seed", "ser.ppo=false", "ser.max_loops=2", "ser.loss=hinge",
            "ser.retrain_data=filtered_plus_seed", "ser.keep=best_val"]
    assert main(args) == 0
    assert losses == {"loop-0": PairLoss.HINGE, "loop-1": PairLoss.HINGE, "loop-2": PairLoss.HINGE,
                      "full": PairLoss.HINGE}
    rows = read_metrics(root / "ser-plus-seed" / "metrics.jsonl")
    n_seed = json.loads((root / "ser-plus-seed" / "splits" / "sizes.json").read_text())["seed"]
    assert all(r["ser/train_pairs"] == r["ser/selected"] + n_seed for r in rows[1:])
    best = max(range(len(rows)), key=lambda i: (rows[i]["ser/val_acc"], -i))
    table = (root / "ser-plus-seed" / "table.md").read_text()
    assert f"| SER (loop {best})" in table and f"- kept: loop {best}, the highest validation accuracy" in table
    assert "RM (hinge loss)" in table
