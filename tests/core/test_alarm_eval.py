"""The alarm's validation arithmetic (r2m.core.alarm_eval) on constructed series, with hand-worked values."""

from __future__ import annotations

import math

import pytest

from r2m.core import alarm_eval as ae
from r2m.config.monitor import MonitorConfig
from r2m.core.monitor import Signal
from r2m.errors import DataError

STEP = 10


def _run(gold, kl=None, world="length", name="r", **signals) -> ae.RunSeries:
    """A run evaluated every 10 steps; ``signals``: short signal key -> one value per evaluation."""
    kl = kl if kl is not None else [0.013 * i for i in range(len(gold))]
    rows = []
    for i, (g, k) in enumerate(zip(gold, kl)):
        row = {"step": STEP * i, "eval/gold": g, "eval/kl": k}
        row.update({f"monitor/{key}": vals[i] for key, vals in signals.items()})
        rows.append(row)
    return ae.RunSeries(name, world, "RLOO", "vanilla", 0, False, tuple(rows))


TOKEN_ONLY = ae.only(Signal.TOKEN_JS, 0.1, 2)


def test_alarm_selection_follows_best_before_alarm():
    # token_js trips (>= 0.1) at evaluations 3, 4, 5: with patience 2 the alarm fires at 4, onset 3, keep 2.
    run = _run([0.7] * 6, token_js=[0.0, 0.01, 0.02, 0.2, 0.3, 0.4])
    assert ae.alarm_selection(run.rows, TOKEN_ONLY) == ae.Selection(2, 4)
    assert ae.alarm_selection(run.rows, ae.only(Signal.TOKEN_JS, 0.1, 1)) == ae.Selection(2, 3)
    # No alarm: the run's final policy.
    assert ae.alarm_selection(run.rows, ae.only(Signal.TOKEN_JS, 0.5, 1)) == ae.Selection(5, None)
    # warmup 0 and a trip at evaluation 0: onset 0, nothing before it, the SFT policy (evaluation 0) is kept.
    early = _run([0.7] * 3, token_js=[0.2, 0.2, 0.2])
    cfg = MonitorConfig(**{**ae.thresholds(ae.only(Signal.TOKEN_JS, 0.1, 1)), "warmup": 0})
    assert ae.alarm_selection(early.rows, cfg) == ae.Selection(0, 0)


def test_only_turns_every_other_signal_off():
    cfg = ae.only(Signal.HIDDEN_DRIFT, 0.05, 3)
    assert cfg.min_signals == 1 and cfg.patience == 3 and cfg.threshold(Signal.HIDDEN_DRIFT) == 0.05
    assert all(cfg.threshold(s) is None for s in Signal if s is not Signal.HIDDEN_DRIFT)


def test_recovered_share_by_hand():
    assert ae.recovered(0.7, 0.8, 0.77) == pytest.approx(0.7)
    assert ae.recovered(0.7, 0.8, 0.65) == pytest.approx(-0.5)
    assert ae.recovered(0.7, 0.7, 0.6) is None  # no gain: 0/0, never a number


def test_timing_within_one_interval():
    assert ae.timing(40, 50, 10, 100) is ae.Timing.HIT
    assert ae.timing(60, 50, 10, 100) is ae.Timing.HIT
    assert ae.timing(30, 50, 10, 100) is ae.Timing.EARLY
    assert ae.timing(70, 50, 10, 100) is ae.Timing.LATE
    assert ae.timing(None, 50, 10, 100) is ae.Timing.NONE  # gold peaked at 50 of 100: an alarm was due
    assert ae.timing(None, 90, 10, 100) is ae.Timing.QUIET  # the peak at the end: none was due


def test_score_and_summary_by_hand():
    # gold peaks at step 30 (0.8); the alarm fires at evaluation 4 (step 40), keeps evaluation 2 (gold 0.78):
    # recovered (0.78 - 0.7) / (0.8 - 0.7) = 0.8, a hit (|40 - 30| <= 10).
    a = _run([0.7, 0.72, 0.78, 0.8, 0.75, 0.7], name="a", token_js=[0, 0, 0, 0.2, 0.3, 0.4])
    out = ae.score(a, ae.alarm_selection(a.rows, TOKEN_ONLY))
    assert (out.selected_step, out.fired_step, out.peak_step, out.timing) == (20, 40, 30, ae.Timing.HIT)
    assert out.recovered == pytest.approx(0.8)
    # b: no alarm, final policy (gold 0.75 of peak 0.8 from 0.7): 0.5; c: gold never rises (no gain).
    b = _run([0.7, 0.8, 0.75], name="b", token_js=[0, 0, 0])
    missed = ae.score(_run([0.7, 0.8, 0.75, 0.7], token_js=[0] * 4), ae.Selection(3, None))
    assert missed.timing is ae.Timing.NONE and missed.recovered == pytest.approx(0.0)
    c = _run([0.7, 0.6, 0.5], name="c", token_js=[0, 0.3, 0.3])
    s = ae.summarize(ae.evaluate([a, b, c], lambda rows: ae.alarm_selection(rows, TOKEN_ONLY)))
    assert (s.runs, s.hits, s.early, s.late, s.no_alarm, s.no_gain) == (3, 1, 0, 1, 1, 1)
    assert s.quiet == 1  # b's gold peaks at step 10 of 20: within one interval of the end, no alarm was due
    # c fires at step 20, peak at step 0 -> late; the recovered figures are over a and b only.
    assert s.mean_recovered == pytest.approx(0.65) and s.median_recovered == pytest.approx(0.65)
    assert s.recovered_90pct_share == 0.0 and s.hit_rate == pytest.approx(1 / 3)
    empty = ae.summarize([])
    assert empty.mean_recovered is None and empty.recovered_90pct_share is None and empty.hit_rate is None


def test_kl_and_step_stops():
    run = _run([0.5] * 5, kl=[0.0, 0.01, 0.03, 0.06, 0.1])
    assert ae.kl_stop(run.rows, 0.05) == ae.Selection(2, 3)  # first KL above 0.05 at eval 3: keep eval 2
    assert ae.kl_stop(run.rows, 0.03) == ae.Selection(2, 3)
    assert ae.kl_stop(run.rows, 1.0) == ae.Selection(4, None)
    assert ae.step_stop(run.rows, 25) == ae.Selection(2, 3)
    assert ae.step_stop(run.rows, 40) == ae.Selection(4, None)


def test_the_kl_signal_alone_is_the_fixed_kl_stop():
    """Signal.KL reads eval/kl; alone (warmup 1, patience 1) it keeps what kl_stop keeps, at budgets between the
    logged values (the signal trips at >= its threshold, the stop at > its budget)."""
    run = _run([0.5, 0.6, 0.7, 0.65, 0.6], kl=[0.0, 0.013, 0.031, 0.062, 0.097])
    for budget in (0.005, 0.02, 0.05, 0.08, 0.5):
        assert ae.alarm_selection(run.rows, ae.only(Signal.KL, budget, 1)) == ae.kl_stop(run.rows, budget)
    assert ae.alarm_selection(run.rows, ae.only(Signal.KL, 0.05, 1)) == ae.Selection(2, 3)


KLS = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12]


def test_lowo_kl_budget_is_tuned_on_the_other_worlds_only():
    # World A peaks at KL 0.04, world C at KL 0.1 with three runs: over every run the best budget is 0.1
    # (mean recovered (-0.5 + 3 * 1) / 4 = 0.625 against (1 + 3 / 3) / 4 = 0.5 at 0.04), so a budget for C
    # tuned with C's own runs would be 0.1; leave-one-world-out tunes C's on A alone: 0.04.
    a = _run([0.5, 0.6, 0.7, 0.6, 0.5, 0.4, 0.3], KLS, world="A", name="a")
    cs = [_run([0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.7], KLS, world="C", name=f"c{i}") for i in range(3)]
    assert ae.tune_stop([a, *cs], ae.kl_candidates([a, *cs]), ae.kl_stop) == 0.1
    assert ae.lowo_kl_budgets([a, *cs], ["A", "C"]) == {"A": 0.1, "C": 0.04}


def test_kl_candidates_thinned_evenly_by_rank():
    runs = [_run([0.5] * 10, [0.001 * i + 0.0001 * j for i in range(10)], name=f"r{j}") for j in range(10)]
    values = sorted({float(r["eval/kl"]) for run in runs for r in run.rows})
    thin = ae.kl_candidates(runs, limit=5)
    assert len(thin) == 5 and thin[0] == values[0] and thin[-1] == values[-1]
    assert ae.kl_candidates(runs[:1]) == [float(r["eval/kl"]) for r in runs[0].rows]


def test_step_stop_tuned():
    run = _run([0.5, 0.6, 0.7, 0.8, 0.6, 0.5])
    assert ae.tune_stop([run], ae.step_candidates([run]), ae.step_stop) == 30


# gold peaks at evaluation 3; token_js first reaches 0.005 at evaluation 4, so the one-signal alarm with
# threshold 0.005 and patience 1 fires at 4 and keeps 3 (recovered 1). 0.002 and below fire too early;
# 0.01 keeps evaluation 4; 0.005 with patience 2 fires at 5, onset 4, the same kept policy: a tie, and the
# grid's first candidate (patience 1) wins.
PEAKED = dict(gold=[0.5, 0.6, 0.7, 0.8, 0.6, 0.5], token_js=[0.0, 0.0004, 0.0015, 0.003, 0.007, 0.02])


def test_grid_search_picks_the_known_threshold():
    run = _run(PEAKED["gold"], token_js=PEAKED["token_js"])
    assert ae.tune_signal([run], Signal.TOKEN_JS) == ae.only(Signal.TOKEN_JS, 0.005, 1)
    # The combined rule on the same run: whatever it settles on keeps the peak.
    cfg = ae.tune_alarm([run])
    s = ae.summarize(ae.evaluate([run], lambda rows: ae.alarm_selection(rows, cfg)))
    assert s.mean_recovered == pytest.approx(1.0) and s.hits == 1
    start = ae.summarize(ae.evaluate([run], lambda rows: ae.alarm_selection(rows, ae.TUNING_START)))
    assert start.mean_recovered < 1.0  # the ascent's start never fires here: final policy (gold 0.5 -> 0.0)


def test_check_series_names_run_and_row():
    ae.check_series(_run([0.5, 0.6]))
    bad = ae.RunSeries("bad-run", "length", "RLOO", "vanilla", 0, False, ({"step": 0, "eval/kl": 0.0},))
    with pytest.raises(DataError, match="bad-run, evaluation 0: eval/gold"):
        ae.check_series(bad)
    back = _run([0.5, 0.6])._replace(rows=({"step": 10, "eval/gold": 0.5, "eval/kl": 0.0},
                                           {"step": 0, "eval/gold": 0.5, "eval/kl": 0.0}))
    with pytest.raises(DataError, match="not increasing"):
        ae.check_series(back)
    with pytest.raises(DataError, match="no evaluation row"):
        ae.check_series(back._replace(rows=()))


def test_lowo_alarm_is_tuned_on_the_other_worlds_only():
    # World A's token_js first reaches 0.005 just after its gold peak, world C's reaches 0.01 there (0.005 at
    # the peak itself). Each world's own rule keeps its peak; the rule tuned on the other world does not.
    a = _run(PEAKED["gold"], world="A", name="a", token_js=PEAKED["token_js"])
    c = _run(PEAKED["gold"], world="C", name="c", token_js=[0.0, 0.001, 0.003, 0.007, 0.015, 0.03])
    lowo = ae.tune_lowo([a, c], ["A", "C"])
    assert lowo == {"A": ae.tune_rules([c]).combined, "C": ae.tune_rules([a]).combined}
    on = lambda run, cfg: ae.score(run, ae.alarm_selection(run.rows, cfg)).recovered  # noqa: E731
    assert on(a, ae.tune_rules([a]).combined) == pytest.approx(1.0)
    assert on(c, ae.tune_rules([c]).combined) == pytest.approx(1.0)
    assert on(c, lowo["C"]) == pytest.approx(2 / 3)  # A's 0.005 fires at C's peak and keeps the one before


def test_tune_rules_without_runs_is_the_start():
    empty = ae.tune_rules([])
    assert empty.combined == ae.TUNING_START and set(empty.signals) == set(Signal)


def test_kl_thresholds_reproduce_the_fixed_kl_stop_at_every_logged_budget():
    """At a budget equal to a logged KL the stop (> b) and the signal (>= t) differ; t = nextafter(b) agrees."""
    kl = [0.0, 0.013, 0.031, 0.062, 0.097]
    run = _run([0.5, 0.6, 0.7, 0.65, 0.6], kl=kl)
    ts = ae.kl_thresholds([run])
    assert len(ts) == 5 and all(b < t < b + 1e-12 for t, b in zip(ts, kl))  # budget 0 -> the least float > 0
    for t, b in zip(ts, kl):
        assert ae.alarm_selection(run.rows, ae.only(Signal.KL, t, 1)) == ae.kl_stop(run.rows, b)
    # A budget below 0 (k1 can log one) has no threshold > 0: left out.
    assert ae.kl_thresholds([_run([0.5, 0.6], kl=[-0.004, 0.02])]) == (math.nextafter(0.02, math.inf),)
    # At the logged value itself the signal fires one evaluation earlier than the stop: why nextafter.
    assert ae.alarm_selection(run.rows, ae.only(Signal.KL, 0.031, 1)) == ae.Selection(1, 2)
    assert ae.kl_stop(run.rows, 0.031) == ae.Selection(2, 3)


def test_threshold_grid_swaps_only_the_kl_thresholds():
    run = _run([0.5, 0.6, 0.7], kl=[0.0, 0.0137, 0.0291])
    grid = ae.threshold_grid([run])
    assert grid[Signal.KL] == ae.kl_thresholds([run]) and len(grid[Signal.KL]) == 3
    assert all(grid[s] == ae.THRESHOLD_GRID[s] for s in Signal if s is not Signal.KL)
    flat = _run([0.5, 0.6], kl=[-0.01, -0.02])  # no budget >= 0 logged: the fixed grid
    assert ae.threshold_grid([flat])[Signal.KL] == ae.THRESHOLD_GRID[Signal.KL]


def test_the_tuned_kl_signal_matches_the_tuned_fixed_kl_stop_in_sample():
    """On the same runs the KL signal's tuning reaches the fixed-KL stop's best, which a 0.01 grid would miss:
    gold peaks at KL 0.0437 in both runs, just before KL 0.0468 / 0.0471."""
    runs = [_run([0.5, 0.6, 0.7, 0.8, 0.6, 0.5], kl=[0.0, 0.0121, 0.0283, 0.0437, 0.0468 + 0.0003 * j, 0.07],
                 name=f"r{j}") for j in range(2)]
    on = lambda sel: ae.summarize(ae.evaluate(runs, sel)).mean_recovered  # noqa: E731
    budget = ae.tune_stop(runs, ae.kl_candidates(runs), ae.kl_stop)
    assert on(lambda rows: ae.kl_stop(rows, budget)) == pytest.approx(1.0)
    cfg = ae.tune_signal(runs, Signal.KL)
    assert on(lambda rows: ae.alarm_selection(rows, cfg)) == pytest.approx(1.0)
    coarse = ae.tune_signal(runs, Signal.KL, ae.THRESHOLD_GRID)  # 0.04 fires at the peak, 0.05 after 0.0468
    assert on(lambda rows: ae.alarm_selection(rows, coarse)) < 1.0
