"""The over-optimisation alarm scored against the gold reward (issue 19, item 4): pure arithmetic on the
evaluation rows a run logged, no I/O.

A run is a :class:`RunSeries`: its evaluation rows in step order (each with ``step``, ``eval/gold``,
``eval/kl`` and the ``monitor/*`` signals). For a stopping rule, the *selected* evaluation is the policy the
rule keeps:

* the alarm (:func:`alarm_selection`, by :func:`r2m.core.monitor.first_alarm`, the rule the run itself
  applies): as ``checkpoints/best-before-alarm`` in the run, the evaluation ``onset - 1`` before the alarm's
  onset; when the onset is evaluation 0 (``warmup=0``) nothing comes before it and the SFT policy
  (evaluation 0) is kept; when no alarm fires, the run's final policy (its last evaluation);
* a fixed KL budget (:func:`kl_stop`): the run stops at the first evaluation whose ``eval/kl`` exceeds the
  budget and keeps the one before it (what a run watching its KL could do); never exceeded: the last one;
* a fixed step (:func:`step_stop`): the last evaluation at or before that step.

The score of a selection (:func:`recovered`) is the share of the way from SFT to peak gold,
``(g_sel - g_0) / (g_peak - g_0)`` with ``g_0`` the gold of evaluation 0 and ``g_peak`` the highest gold
logged; it is at most 1 (the peak is one of the evaluations) and negative when the kept policy is worse than
SFT. A run whose gold never rises above ``g_0`` has no gain to recover: its share is 0/0, so it is None here,
and the summaries count such runs (``no_gain``) and leave them out of the recovered figures' denominators,
never silently. The timing of an alarm (:func:`timing`) compares the step where it fires with the peak-gold
step, within one evaluation interval.

Tuning (:func:`tune_alarm`, :func:`tune_stop`) picks, on the tuning runs only, the candidate with the highest
mean recovered share (ties: the higher share of runs recovering >= 90%, then the earlier candidate). The
thresholds tried are :func:`threshold_grid`'s: a fixed grid per signal, except the KL signal's, which are the
fixed-KL stop's own budgets on the same runs (:func:`kl_thresholds`), so that the alarm is never tuned on a
coarser KL grid than the baseline it is compared with.
"""

from __future__ import annotations

import enum
import math
import statistics
from dataclasses import dataclass, replace
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

from r2m.config.monitor import MonitorConfig
from r2m.core.monitor import SIGNAL_FIELDS as _FIELDS, Signal, first_alarm
from r2m.errors import DataError

GOLD, KL = "eval/gold", "eval/kl"
TARGET_RECOVERED = 0.9
"""A run 'recovers' when its kept checkpoint has at least this share of the SFT -> peak gold gain."""
TARGET_SHARE = 0.8
"""Issue 19's target: at least this share of the held-out runs recover."""

THRESHOLD_GRID: dict[Signal, tuple[float, ...]] = {
    Signal.CHECK_DISAGREEMENT: (0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2),
    Signal.PROXY_GAIN_PER_KL: (0.02, 0.05, 0.1, 0.25, 0.5, 0.75),
    Signal.LENGTH_REL_CHANGE: (0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5),
    Signal.TOKEN_JS: (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
    Signal.HIDDEN_DRIFT: (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2),
    Signal.HIDDEN_SEPARATION: (0.002, 0.005, 0.01, 0.02, 0.05),
    Signal.FUSED_DISAGREEMENT: (0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
    Signal.KL: (*(round(0.01 * i, 2) for i in range(1, 13)), 0.15, 0.2),  # every 0.01 nats to 0.12
}
"""Per signal, the thresholds the tuning tries (spanning the values logged in the paper bench's `length` runs
of 100 steps, from the first evaluations to well past the gold peak). The KL signal's row is used only when the
tuning runs logged no KL >= 0; otherwise :func:`threshold_grid` replaces it by :func:`kl_thresholds`."""
Grid = Mapping[Signal, Sequence[float]]
"""Per signal, the thresholds one tuning tries (:func:`threshold_grid`)."""
PATIENCE_GRID = (1, 2, 3)
MIN_SIGNALS_GRID = (1, 2, 3)
TUNING_START = MonitorConfig(check_disagreement_rise=0.1, proxy_gain_per_kl_ratio=0.25, length_rel_change=0.3,
                           token_js=0.1, hidden_drift=0.2, hidden_separation_rise=0.05, fused_disagreement_rise=0.1,
                           kl=None, min_signals=2, patience=2, warmup=1)
"""The coordinate ascent's first start: the monitor's placeholder thresholds from before the validation, fixed
here so that the tuning does not depend on the shipped defaults (which come from it, docs/MONITOR.md)."""


class RunSeries(NamedTuple):
    """One run's evaluation rows (step order) and what the report groups it by."""

    name: str
    world: str
    algorithm: str
    arm: str
    seed: int
    r2m: bool
    """The arm runs R2M (its reward is the fused score)."""
    rows: tuple[Mapping[str, object], ...]


def check_series(run: RunSeries) -> None:
    """Refuse a run whose rows the scoring cannot read (names the run and the row)."""
    if not run.rows:
        raise DataError(f"alarm validation: run {run.name} has no evaluation row")
    for i, row in enumerate(run.rows):
        for key in ("step", GOLD, KL):
            v = row.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DataError(f"alarm validation: run {run.name}, evaluation {i}: {key} is {v!r}; expected a "
                                "finite number")
    steps = [int(r["step"]) for r in run.rows]
    if steps != sorted(set(steps)):
        raise DataError(f"alarm validation: run {run.name}: evaluation steps {steps} are not increasing")


def peak_index(rows: Sequence[Mapping[str, object]]) -> int:
    """The evaluation of highest gold (the first on ties)."""
    golds = [float(r[GOLD]) for r in rows]
    return golds.index(max(golds))


def eval_interval(rows: Sequence[Mapping[str, object]]) -> Optional[int]:
    """The smallest step gap between consecutive evaluations (None with one evaluation)."""
    steps = [int(r["step"]) for r in rows]
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    return min(gaps) if gaps else None


class Selection(NamedTuple):
    """What a stopping rule keeps in one run."""

    index: int
    """The kept evaluation."""
    fired_index: Optional[int]
    """Where the rule fired (the alarm's evaluation); None: it never did and the final policy is kept."""


def alarm_selection(rows: Sequence[Mapping[str, object]], config: MonitorConfig) -> Selection:
    """The alarm's kept evaluation: onset - 1 (best-before-alarm), 0 when onset is 0, the last without alarm."""
    alarm = first_alarm(rows, config)
    if alarm.index is None:
        return Selection(len(rows) - 1, None)
    return Selection(max(alarm.onset - 1, 0), alarm.index)


def kl_stop(rows: Sequence[Mapping[str, object]], budget: float) -> Selection:
    """Stop at the first evaluation with eval/kl > ``budget``, keeping the one before it."""
    for i, row in enumerate(rows):
        if float(row[KL]) > budget:
            return Selection(max(i - 1, 0), i)
    return Selection(len(rows) - 1, None)


def step_stop(rows: Sequence[Mapping[str, object]], step: int) -> Selection:
    """The last evaluation at or before ``step`` (evaluation 0 when every one is later)."""
    kept = [i for i, r in enumerate(rows) if int(r["step"]) <= step]
    fired = next((i for i, r in enumerate(rows) if int(r["step"]) > step), None)
    return Selection(kept[-1] if kept else 0, fired)


def recovered(g_0: float, g_peak: float, g_sel: float) -> Optional[float]:
    """(g_sel - g_0) / (g_peak - g_0); None when g_peak <= g_0 (no gain to recover)."""
    gain = g_peak - g_0
    return (g_sel - g_0) / gain if gain > 0 else None


class Timing(str, enum.Enum):
    """When an alarm fired relative to the gold peak."""

    HIT = "hit"
    """|alarm step - peak step| <= one evaluation interval."""
    EARLY = "early"
    LATE = "late"
    QUIET = "quiet"
    """No alarm, and none was due: the gold peak is within one interval of the last evaluation."""
    NONE = "none"
    """No alarm, though gold had peaked earlier (a missed alarm)."""


def timing(fired_step: Optional[int], peak_step: int, interval: int, last_step: int) -> Timing:
    if fired_step is None:
        return Timing.QUIET if last_step - peak_step <= interval else Timing.NONE
    if abs(fired_step - peak_step) <= interval:
        return Timing.HIT
    return Timing.EARLY if fired_step < peak_step else Timing.LATE


class Outcome(NamedTuple):
    """One rule on one run."""

    run: RunSeries
    selected_step: int
    fired_step: Optional[int]
    peak_step: int
    timing: Timing
    recovered: Optional[float]
    """None: the run has no gain (see the module doc)."""


def score(run: RunSeries, sel: Selection) -> Outcome:
    rows = run.rows
    p = peak_index(rows)
    fired = None if sel.fired_index is None else int(rows[sel.fired_index]["step"])
    interval = eval_interval(rows) or 0
    peak_step = int(rows[p]["step"])
    rec = recovered(float(rows[0][GOLD]), float(rows[p][GOLD]), float(rows[sel.index][GOLD]))
    return Outcome(run, int(rows[sel.index]["step"]), fired, peak_step, timing(fired, peak_step, interval,
                   int(rows[-1]["step"])), rec)


Selector = Callable[[Sequence[Mapping[str, object]]], Selection]


def evaluate(runs: Sequence[RunSeries], select: Selector) -> list[Outcome]:
    """``select`` (a stopping rule on one run's rows) scored on every run."""
    return [score(r, select(r.rows)) for r in runs]


@dataclass(frozen=True)
class Summary:
    """A rule's figures over a set of runs."""

    runs: int
    hits: int
    early: int
    late: int
    no_alarm: int
    """Runs where the rule never fired (missed or quiet)."""
    quiet: int
    """Of ``no_alarm``, those where none was due (:attr:`Timing.QUIET`)."""
    no_gain: int
    """Runs whose gold never rose above SFT's: in ``runs`` and the timing counts, not in the recovered figures."""
    mean_recovered: Optional[float]
    median_recovered: Optional[float]
    recovered_90pct_share: Optional[float]
    """Share of the runs with a gain whose kept checkpoint recovers >= 90% of it."""

    @property
    def hit_rate(self) -> Optional[float]:
        return self.hits / self.runs if self.runs else None

    def as_dict(self) -> dict:
        return {"runs": self.runs, "hits": self.hits, "hit_rate": self.hit_rate, "early": self.early,
                "late": self.late, "no_alarm": self.no_alarm, "quiet": self.quiet, "no_gain": self.no_gain,
                "with_gain": self.runs - self.no_gain, "mean_recovered": self.mean_recovered,
                "median_recovered": self.median_recovered, "recovered_90pct_share": self.recovered_90pct_share}


def summarize(outcomes: Sequence[Outcome]) -> Summary:
    count = lambda t: sum(o.timing is t for o in outcomes)  # noqa: E731
    recs = [o.recovered for o in outcomes if o.recovered is not None]
    return Summary(len(outcomes), count(Timing.HIT), count(Timing.EARLY), count(Timing.LATE),
                   count(Timing.NONE) + count(Timing.QUIET), count(Timing.QUIET),
                   len(outcomes) - len(recs), statistics.fmean(recs) if recs else None,
                   statistics.median(recs) if recs else None,
                   sum(r >= TARGET_RECOVERED for r in recs) / len(recs) if recs else None)


def _key(s: Summary) -> tuple[float, float, int]:
    """Tuning objective: mean recovered, then the >= 90% share, then hits (higher is better)."""
    return (-math.inf if s.mean_recovered is None else s.mean_recovered,
            -math.inf if s.recovered_90pct_share is None else s.recovered_90pct_share, s.hits)


def _best(candidates: Sequence, runs: Sequence[RunSeries], selector: Callable[[object], Selector]):
    """The first candidate of highest :func:`_key` on ``runs`` (None when there is no candidate)."""
    best, best_key = None, None
    for c in candidates:
        k = _key(summarize(evaluate(runs, selector(c))))
        if best_key is None or k > best_key:
            best, best_key = c, k
    return best


def tune_stop(runs: Sequence[RunSeries], candidates: Sequence[float], stop: Callable) -> Optional[float]:
    """The budget (or step) of ``stop`` (:func:`kl_stop` or :func:`step_stop`) best on ``runs``."""
    return _best(candidates, runs, lambda c: lambda rows: stop(rows, c))


def kl_candidates(runs: Sequence[RunSeries], limit: int = 64) -> list[float]:
    """The distinct eval/kl values the runs logged (at most ``limit``, evenly spaced by rank): a stop just at or
    after each of them is every distinct fixed-KL stop there is on these runs."""
    values = sorted({float(r[KL]) for run in runs for r in run.rows})
    if len(values) > limit:
        values = [values[round(i * (len(values) - 1) / (limit - 1))] for i in range(limit)]
    return values


def step_candidates(runs: Sequence[RunSeries]) -> list[int]:
    return sorted({int(r["step"]) for run in runs for r in run.rows})


def lowo_kl_budgets(runs: Sequence[RunSeries], worlds: Sequence[str]) -> dict[str, Optional[float]]:
    """Per world, the fixed-KL budget tuned on the runs of every OTHER world (leave one world out)."""
    out = {}
    for w in worlds:
        others = [r for r in runs if r.world != w]
        out[w] = tune_stop(others, kl_candidates(others), kl_stop)
    return out


def only(signal: Signal, threshold: float, patience: int) -> MonitorConfig:
    """The alarm with one signal on (min_signals 1) and every other off."""
    off = {f: None for f in _FIELDS.values()}
    return MonitorConfig(**{**off, _FIELDS[signal]: threshold}, min_signals=1, patience=patience)


def _alarm(config: MonitorConfig) -> Selector:
    return lambda rows: alarm_selection(rows, config)


def best_rule(runs: Sequence[RunSeries], configs: Sequence[MonitorConfig]) -> Optional[MonitorConfig]:
    """The first of ``configs`` best on ``runs`` (the tuning objective of the module doc)."""
    return _best(configs, runs, _alarm)


def kl_thresholds(runs: Sequence[RunSeries]) -> tuple[float, ...]:
    """The KL signal's thresholds on ``runs``: just above each fixed-KL budget of :func:`kl_candidates`.

    The alarm trips at eval/kl >= t and :func:`kl_stop` at eval/kl > b, so t = nextafter(b, +inf) makes the KL
    signal alone at patience 1 keep the same checkpoint as the fixed-KL stop at budget b (and fire at the same
    evaluation, except when evaluation 0 already exceeds b: the stop fires there, the alarm at warmup 1 one
    later): the alarm's KL threshold is tuned at the baseline's own resolution, not on a coarser grid. A budget
    below 0 (the k1 estimate of KL can log one) gives a threshold <= 0, which MonitorConfig refuses: it is left
    out, and the alarm has no rule that stops where such a budget does (at an evaluation with KL below 0)."""
    nudged = (math.nextafter(b, math.inf) for b in kl_candidates(runs))
    return tuple(t for t in nudged if t > 0)


def threshold_grid(runs: Sequence[RunSeries]) -> dict[Signal, tuple[float, ...]]:
    """The grid one tuning on ``runs`` tries: :data:`THRESHOLD_GRID`, with the KL signal's thresholds at the
    fixed-KL stop's resolution on the same runs (:func:`kl_thresholds`; the fixed grid when none is > 0)."""
    kl = kl_thresholds(runs)
    return {**THRESHOLD_GRID, Signal.KL: kl or THRESHOLD_GRID[Signal.KL]}


def tune_signal(runs: Sequence[RunSeries], signal: Signal, grid: Optional[Grid] = None) -> MonitorConfig:
    """One signal alone: the best of its thresholds in ``grid`` (default :func:`threshold_grid` of ``runs``) x
    :data:`PATIENCE_GRID` on ``runs``."""
    grid = threshold_grid(runs) if grid is None else grid
    configs = [only(signal, t, p) for p in PATIENCE_GRID for t in grid[signal]]
    return _best(configs, runs, _alarm)


def _ascend(runs: Sequence[RunSeries], cfg: MonitorConfig, sweeps: int, signals: Sequence[Signal],
            grid: Grid) -> MonitorConfig:
    """Coordinate ascent on the thresholds: each of ``signals`` in turn tries its current value, off, then its grid."""
    for _ in range(sweeps):
        for sig in signals:
            options = [replace(cfg, **{_FIELDS[sig]: t}) for t in (cfg.threshold(sig), None, *grid[sig])]
            cfg = _best(options, runs, _alarm)
    return cfg


def tune_alarm(runs: Sequence[RunSeries], starts: Sequence[MonitorConfig] = (TUNING_START,),
               also: Sequence[MonitorConfig] = (), sweeps: int = 2,
               signals: Sequence[Signal] = tuple(Signal), grid: Optional[Grid] = None) -> MonitorConfig:
    """The combined rule: for each start and each (min_signals, patience) of the grids, coordinate ascent on
    the thresholds of ``signals`` in ``grid`` (default :func:`threshold_grid` of ``runs``; :func:`_ascend`,
    ``sweeps`` rounds); the best of these and of ``also`` (e.g. each signal's own tuned rule, so that the
    combined rule is never worse than one signal on the tuning runs). A full grid (about 8^8 threshold sets)
    would cost hours; this costs about 2,200 replays per start with 64 KL thresholds (about 1,000 without the KL
    signal)."""
    grid = threshold_grid(runs) if grid is None else grid
    finalists = [_ascend(runs, replace(start, min_signals=m, patience=p), sweeps, signals, grid)
                 for start in starts for m in MIN_SIGNALS_GRID for p in PATIENCE_GRID]
    return _best([*finalists, *also], runs, _alarm)


class TunedRules(NamedTuple):
    """Every alarm rule tuned on one set of runs."""

    signals: dict[Signal, MonitorConfig]
    """Each signal alone (:func:`tune_signal`)."""
    combined: MonitorConfig
    """The combined rule (:func:`tune_alarm` from :data:`TUNING_START` and from the best single signal, each
    single signal a finalist)."""


def tune_rules(runs: Sequence[RunSeries], signals: Sequence[Signal] = tuple(Signal)) -> TunedRules:
    """:class:`TunedRules` on ``runs`` over ``signals`` (the others stay off in the combined rule); with no run,
    each signal at its grid's first threshold and the start."""
    if not runs:
        return TunedRules({s: only(s, THRESHOLD_GRID[s][0], 1) for s in signals}, TUNING_START)
    grid = threshold_grid(runs)
    singles = {s: tune_signal(runs, s, grid) for s in signals}
    starts = (TUNING_START, best_rule(runs, list(singles.values())))
    return TunedRules(singles, tune_alarm(runs, starts, list(singles.values()), signals=signals, grid=grid))


WITHOUT_KL = tuple(s for s in Signal if s is not Signal.KL)
"""The label-free signals other than the KL budget (the combined rule before the KL signal joined it)."""


def tune_lowo(runs: Sequence[RunSeries], worlds: Sequence[str],
              signals: Sequence[Signal] = tuple(Signal)) -> dict[str, MonitorConfig]:
    """Per world, the combined rule over ``signals`` tuned on the runs of every OTHER world (leave one world out,
    the protocol of :func:`lowo_kl_budgets`)."""
    return {w: tune_rules([r for r in runs if r.world != w], signals).combined for w in worlds}


def thresholds(config: MonitorConfig) -> dict[str, object]:
    """The config's fields by name (for a report)."""
    out: dict[str, object] = {f: config.threshold(s) for s, f in _FIELDS.items()}
    out.update(min_signals=config.min_signals, patience=config.patience, warmup=config.warmup)
    return out
