"""Label-free over-optimisation signals and the alarm rule (r2m.core.monitor), on constructed data."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from r2m.config.monitor import MonitorConfig
from r2m.core.monitor import (
    SIGNAL_RULES,
    Rule,
    Signal,
    centroid_drift,
    first_alarm,
    hidden_clustering,
    hidden_drift,
    js_divergence,
    length_drift,
    mean_pool,
    proxy_gain_per_kl,
    rank_disagreement,
    token_drift,
    tripped_signals,
    two_means,
    unigram_distribution,
)
from r2m.errors import ConfigError, DataError


# --- rank disagreement (proxy vs check RM; R2M fused vs vanilla) -----------------------------------------

def test_rank_disagreement_hand_worked():
    a = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.1, 0.9]])
    b = torch.tensor([[1.1, 2.2, 3.3], [0.5, 0.9, 0.1]])
    # group 0: all three pairs agree; group 1: (0,1), (0,2), (1,2) are all discordant -> 3 / 6.
    r = rank_disagreement(a, b)
    assert (r.value, r.discordant, r.pairs) == (0.5, 3, 6)
    assert rank_disagreement(a, a).value == 0.0
    assert rank_disagreement(a, -a).value == 1.0


def test_rank_disagreement_ties_and_mask():
    a = torch.tensor([[0.7, 0.7, 0.2, 0.4]])
    b = torch.tensor([[0.3, 0.1, 0.2, 0.9]])
    # pairs: (0,1) tied in a -> skipped; (0,2) a+ b+ agree; (0,3) a+ b- disagree; (1,2) a+ b- disagree;
    # (1,3) a+ b- disagree; (2,3) a- b- agree -> 3 of 5.
    r = rank_disagreement(a, b)
    assert (r.discordant, r.pairs) == (3, 5)
    # masking out response 3 leaves (0,2) agree, (1,2) disagree -> 1 of 2.
    r = rank_disagreement(a, b, torch.tensor([[True, True, True, False]]))
    assert (r.discordant, r.pairs, r.value) == (1, 2, 0.5)
    assert math.isnan(rank_disagreement(a[:, :1], b[:, :1]).value)
    with pytest.raises(DataError, match="expected two"):
        rank_disagreement(a, b[:, :3])
    with pytest.raises(DataError, match="NaN or infinite"):
        rank_disagreement(a, torch.tensor([[0.3, float("nan"), 0.2, 0.9]]))
    # ... but a NaN score of a masked-out response is no error.
    nan_masked = rank_disagreement(a, torch.tensor([[0.3, 0.1, 0.2, float("nan")]]),
                                   torch.tensor([[True, True, True, False]]))
    assert (nan_masked.discordant, nan_masked.pairs) == (1, 2)


def test_rank_disagreement_matches_a_loop_on_random_ragged_groups():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    b[0, 1] = b[0, 2]  # a tie
    mask = torch.rand(5, 6, generator=g) > 0.3
    disc = pairs = 0
    for gi in range(5):
        for i, j in itertools.combinations(range(6), 2):
            if not (mask[gi, i] and mask[gi, j]):
                continue
            prod = (a[gi, i] - a[gi, j]).sign() * (b[gi, i] - b[gi, j]).sign()
            pairs += int(prod != 0)
            disc += int(prod < 0)
    r = rank_disagreement(a, b, mask)
    assert (r.discordant, r.pairs) == (disc, pairs) and r.value == pytest.approx(disc / pairs)


# --- proxy gain per KL, length and token drift ---------------------------------------------------------

def test_proxy_gain_per_kl():
    r = proxy_gain_per_kl(0.5, 0.8, 0.1, 0.3)
    assert r.value == pytest.approx(1.5) and r.d_proxy == pytest.approx(0.3) and r.d_kl == pytest.approx(0.2)
    assert math.isnan(proxy_gain_per_kl(0.5, 0.8, 0.3, 0.3).value)  # the KL did not grow
    assert math.isnan(proxy_gain_per_kl(0.5, 0.8, 0.3, 0.2).value)  # nor when it fell


def test_length_drift():
    r = length_drift(torch.tensor([10, 14]), torch.tensor([8, 12, 10]))
    # means 12 vs 10; SFT population std = sqrt((4 + 4 + 0) / 3).
    assert (r.mean, r.sft_mean) == (12.0, 10.0) and r.rel_change == pytest.approx(0.2)
    assert r.z == pytest.approx(2 / math.sqrt(8 / 3))
    assert math.isnan(length_drift(torch.tensor([3, 5]), torch.tensor([4, 4])).z)
    with pytest.raises(DataError, match="no lengths"):
        length_drift(torch.tensor([]), torch.tensor([4]))


def test_unigram_and_js_hand_worked():
    tokens = torch.tensor([[0, 1, 5, 5], [1, 0, 0, 5]])  # 5 = padding, masked out
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    p = unigram_distribution(tokens, mask, vocab_size=6)
    assert p.tolist() == pytest.approx([3 / 5, 2 / 5, 0, 0, 0, 0])
    # p = (1/2, 1/2, 0), q = (0, 1/2, 1/2): m = (1/4, 1/2, 1/4), KL(p||m) = KL(q||m) = ln(2) / 2.
    assert js_divergence(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 0.5, 0.5])) == pytest.approx(
        math.log(2) / 2)
    assert js_divergence(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == pytest.approx(math.log(2))
    assert js_divergence(p, p) == 0.0
    # Only the masked-in ids count: the padding id 5 does not need to fit in the vocabulary.
    assert unigram_distribution(tokens, mask, vocab_size=2).tolist() == pytest.approx([3 / 5, 2 / 5])
    with pytest.raises(DataError, match=r"span \[0, 1\]; expected ids in \[0, vocab_size=1\)"):
        unigram_distribution(tokens, mask, vocab_size=1)
    with pytest.raises(DataError, match="selects no token"):
        unigram_distribution(tokens, torch.zeros_like(mask), vocab_size=6)


def test_token_drift():
    sft = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    ones = torch.ones_like(sft, dtype=torch.bool)
    assert token_drift(sft.flip(0), ones, sft, ones, vocab_size=4).js == 0.0  # same tokens, other order
    hacked = torch.tensor([[3, 3, 3, 3], [3, 3, 3, 3]])  # one token repeated
    r = token_drift(hacked, ones, sft, ones, vocab_size=4)
    # p = (0, 0, 0, 1), q = 1/4 each: m = (1/8, 1/8, 1/8, 5/8).
    kl_pm = math.log(8 / 5)
    kl_qm = 3 * 0.25 * math.log(2) + 0.25 * math.log(0.25 / (5 / 8))
    assert r.js == pytest.approx((kl_pm + kl_qm) / 2) and (r.n_tokens, r.n_sft_tokens) == (8, 8)


# --- hidden states -------------------------------------------------------------------------------------

def test_mean_pool_hand_worked():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]], [[0.5, 0.5], [7.0, 7.0], [1.5, 2.5]]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0], [1.0, 1.5]]
    with pytest.raises(DataError, match=r"rows \[1\]"):
        mean_pool(hidden, torch.tensor([[True, False, False], [False, False, False]]))


def test_hidden_drift_and_centroid_drift():
    sft = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    cur = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # scale does not matter; row 1 turned by cos = 0.6
    r = hidden_drift(cur, sft)
    assert r.mean == pytest.approx(0.2) and r.max == pytest.approx(0.4)
    assert hidden_drift(sft, sft).mean == pytest.approx(0.0, abs=1e-12)
    assert hidden_drift(sft, torch.tensor([[0.0, 1.0], [0.8, -0.6]])).mean == pytest.approx(1.0)
    # centroids: (1, 0) vs (0.8, 0.4) -> 1 - 0.8 / sqrt(0.8).
    assert centroid_drift(cur, sft) == pytest.approx(1 - 0.8 / math.sqrt(0.8))
    with pytest.raises(DataError, match="same responses"):
        hidden_drift(cur, sft[:1])


# A = {(1,0,0), (0.8,0.6,0)}, B = {(0,0,1), (0,0.6,0.8)}: within-A and within-B cosines 0.8; cross cosines
# 0, 0, 0, 0.36 (mean 0.09).
TWO_CLUSTERS = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0], [0.0, 0.6, 0.8]])


def test_hidden_clustering_hand_worked():
    r = hidden_clustering(TWO_CLUSTERS * 0.7, rescale=False)
    assert r.labels.tolist() == [False, False, True, True]
    assert (r.within_a, r.within_b, r.within) == pytest.approx((0.8, 0.8, 0.8))
    assert r.cross == pytest.approx(0.09) and r.separation == pytest.approx(0.71)
    assert r.minority_share == 0.5
    # (cos + 1) / 2, the paper's scale: within 0.9, cross 0.545.
    assert hidden_clustering(TWO_CLUSTERS, rescale=True).separation == pytest.approx(0.355)
    # Pairs only within groups {0, 2} and {1, 3}: no within-cluster pair is left; cross = (0 + 0.36) / 2.
    g = hidden_clustering(TWO_CLUSTERS, groups=torch.tensor([0, 1, 0, 1]), rescale=False)
    assert math.isnan(g.within) and g.cross == pytest.approx(0.18)


def _planted(n_hack: int, n: int = 16, d: int = 8, seed: int = 0) -> torch.Tensor:
    """Normal responses near one direction, ``n_hack`` hacking ones near another (Table 5's setting)."""
    g = torch.Generator().manual_seed(seed)
    normal, hack = torch.randn(d, generator=g), torch.randn(d, generator=g)
    centre = torch.stack([hack if i < n_hack else normal for i in range(n)])  # (n, d)
    return centre + 0.3 * torch.randn(n, d, generator=g)


def test_two_means_recovers_a_planted_hacking_cluster_and_separation_rises():
    states = _planted(n_hack=5)
    labels = two_means(states)
    truth = torch.arange(16) < 5
    assert bool((labels == truth).all()) or bool((labels == ~truth).all())
    flat, hacked = hidden_clustering(_planted(n_hack=0)), hidden_clustering(states)
    assert hacked.separation > flat.separation + 0.1
    assert hacked.minority_share == pytest.approx(5 / 16)
    # A pair statistic checked against a loop over the labels two_means gave.
    x = torch.nn.functional.normalize(states.double(), dim=-1)
    same, cross = [], []
    for i, j in itertools.combinations(range(16), 2):
        s = (float(x[i] @ x[j]) + 1) / 2
        (same if bool(labels[i]) == bool(labels[j]) else cross).append(s)
    assert hacked.within == pytest.approx(sum(same) / len(same))
    assert hacked.cross == pytest.approx(sum(cross) / len(cross))


def test_two_means_on_identical_rows_is_one_cluster():
    r = hidden_clustering(torch.ones(4, 3))
    assert not bool(r.labels.any()) and r.minority_share == 0.0 and math.isnan(r.cross)


# --- the alarm rule ------------------------------------------------------------------------------------

RULE = MonitorConfig(check_disagreement_rise=0.1, proxy_gain_per_kl_ratio=0.25, length_rel_change=0.3, token_js=0.1,
                     hidden_drift=0.2, hidden_separation_rise=0.05, fused_disagreement_rise=0.1, kl=0.07,
                     min_signals=2, patience=2, warmup=1)
"""The rule these tests work by hand (every signal on; not the shipped defaults, which the validation sets)."""

FLAT = {Signal.CHECK_DISAGREEMENT.value: 0.2, Signal.PROXY_GAIN_PER_KL.value: 1.2,
        Signal.LENGTH_REL_CHANGE.value: 0.02, Signal.TOKEN_JS.value: 0.01, Signal.HIDDEN_DRIFT.value: 0.03,
        Signal.HIDDEN_SEPARATION.value: 0.1, Signal.FUSED_DISAGREEMENT.value: 0.05}


def _history(n: int = 10, onset: int | None = None) -> list[dict]:
    rows = []
    for i in range(n):
        row = {k: v * (1 + 0.01 * (i % 3)) for k, v in FLAT.items()}  # small wobble
        row["step"], row["gold"] = 10 * i, 0.3  # other keys are ignored
        if onset is not None and i >= onset:
            row[Signal.CHECK_DISAGREEMENT.value] = 0.35
            row[Signal.TOKEN_JS.value] = 0.15
            row[Signal.HIDDEN_DRIFT.value] = 0.3
        rows.append(row)
    return rows


def test_alarm_fires_at_the_planted_onset():
    alarm = first_alarm(_history(onset=6), dataclasses.replace(RULE, min_signals=2, patience=2))
    assert (alarm.index, alarm.onset) == (7, 6)
    assert {r.signal for r in alarm.reasons} == {Signal.CHECK_DISAGREEMENT, Signal.TOKEN_JS, Signal.HIDDEN_DRIFT}
    rise = next(r for r in alarm.reasons if r.signal is Signal.CHECK_DISAGREEMENT)
    assert (rise.value, rise.baseline, rise.threshold, rise.rule) == (0.35, 0.2, 0.1, Rule.RISE)
    assert first_alarm(_history(onset=6), dataclasses.replace(RULE, min_signals=3, patience=1)).index == 6
    assert first_alarm(_history(onset=6), dataclasses.replace(RULE, min_signals=4, patience=1)).index is None


def test_alarm_does_not_fire_on_a_flat_history():
    assert first_alarm(_history(), RULE).index is None
    assert all(t == () for t in tripped_signals(_history(), RULE))
    assert first_alarm([]).index is None


def test_alarm_warmup_and_patience():
    hist = _history(onset=0)
    assert first_alarm(hist, dataclasses.replace(RULE, min_signals=1, patience=1, warmup=0)).index == 0
    assert first_alarm(hist, dataclasses.replace(RULE, min_signals=1, patience=1, warmup=3)).index == 3
    assert first_alarm(hist, dataclasses.replace(RULE, min_signals=1, patience=3, warmup=3))[:2] == (5, 3)
    # A tripped run broken by one quiet evaluation starts again.
    broken = _history(onset=4)
    broken[5] = _history()[5]
    assert first_alarm(broken, dataclasses.replace(RULE, min_signals=2, patience=2)).onset == 6


# (signal, its threshold field, baseline value, a value just under the threshold, one past it), under RULE.
THRESHOLD_CASES = [
    (Signal.CHECK_DISAGREEMENT, "check_disagreement_rise", 0.2, 0.29, 0.31),
    (Signal.PROXY_GAIN_PER_KL, "proxy_gain_per_kl_ratio", 1.2, 0.31, 0.29),  # falls to 0.25 x 1.2 = 0.3
    (Signal.LENGTH_REL_CHANGE, "length_rel_change", 0.02, -0.29, -0.31),  # shorter counts too
    (Signal.TOKEN_JS, "token_js", 0.01, 0.09, 0.11),
    (Signal.HIDDEN_DRIFT, "hidden_drift", 0.03, 0.19, 0.21),
    (Signal.HIDDEN_SEPARATION, "hidden_separation_rise", 0.1, 0.14, 0.16),
    (Signal.FUSED_DISAGREEMENT, "fused_disagreement_rise", 0.05, 0.14, 0.16),
    (Signal.KL, "kl", 0.0, 0.069, 0.071),  # eval/kl, logged by every evaluation
]


@pytest.mark.parametrize("signal, field, base, under, over", THRESHOLD_CASES,
                         ids=[c[0].name for c in THRESHOLD_CASES])
def test_each_threshold_is_respected(signal, field, base, under, over):
    cfg = dataclasses.replace(RULE, min_signals=1, patience=1)
    assert cfg.threshold(signal) == getattr(cfg, field)
    hist = lambda v: [{signal.value: base}, {signal.value: base}, {signal.value: v}]  # noqa: E731
    assert first_alarm(hist(under), cfg).index is None
    alarm = first_alarm(hist(over), cfg)
    assert alarm.index == 2 and [r.signal for r in alarm.reasons] == [signal]
    assert alarm.reasons[0].rule is SIGNAL_RULES[signal]
    assert first_alarm(hist(over), dataclasses.replace(cfg, **{field: None})).index is None  # None: off


def test_alarm_missing_values_and_baselines():
    cfg = dataclasses.replace(RULE, min_signals=1, patience=1)
    key = Signal.FUSED_DISAGREEMENT.value
    # Absent (R2M off), None or NaN never trip; the baseline is the first finite value.
    hist = [{}, {key: None}, {key: float("nan")}, {key: 0.3}, {key: 0.38}]
    assert first_alarm(hist, cfg).index is None
    assert first_alarm(hist + [{key: 0.41}], cfg).index == 5
    # A proxy that did not rise at first (baseline <= 0) gives the ratio rule nothing to fall from.
    gain = Signal.PROXY_GAIN_PER_KL.value
    assert first_alarm([{gain: -0.1}, {gain: -5.0}], cfg).index is None
    with pytest.raises(DataError, match=r"history\[1\]: monitor/token_js is 'x'"):
        first_alarm([{}, {Signal.TOKEN_JS.value: "x"}], cfg)


@pytest.mark.parametrize("field, value", [
    ("min_signals", 0), ("patience", 0), ("warmup", -1), ("token_js", 0.0), ("hidden_drift", -0.1),
    ("proxy_gain_per_kl_ratio", 1.5), ("check_disagreement_rise", float("nan")),
])
def test_alarm_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"monitor.{field}"):
        MonitorConfig(**{field: value})
