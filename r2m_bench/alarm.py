"""The alarm's validation in the gold-reward world: a section of the ``r2m bench`` report
and ``alarm.json`` beside its other artefacts (docs/bench/alarm.json for ``paper``).

The bench's finished RL runs (sweep and cells; their ``metrics.jsonl``) are read as
:class:`r2m_bench.alarm_eval.RunSeries` and split (:data:`TUNE_WORLD`, :data:`TUNE_SEEDS`): the tuning runs
are the ``length`` world's runs of seeds 0 and 1 and of the sweep's tuning seeds; every other run is held
out (the other worlds entirely, and ``length``'s seeds 2-4). The gold-ceiling arm (``reward.source=gold``:
its proxy IS gold, nothing to detect) is left out and counted, as is any run not finished yet. The thresholds
(one combined rule, each signal alone) and the fixed-step stop are tuned on the tuning runs only. The fixed-KL
stop and the headline alarm are tuned the same way, leave one world out: for a held-out run of world w, on
every run of the other worlds (tuning and held-out alike), so that the alarm is compared with the baseline
under one protocol. All figures are then taken on the held-out runs (the arithmetic: r2m_bench.alarm_eval;
docs/MONITOR.md). The combined rule tuned on every run is reported as the candidate for rl.monitor's defaults.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

from r2m.config.monitor import MonitorConfig
from r2m.core.monitor import Signal
from r2m.fileio import atomic_write_text
from r2m.recipes.alarm import EVAL_MARK
from r2m.reports.tables import format_table
from r2m.runtime.runlog import read_metrics
from r2m_bench import alarm_eval as ae
from r2m_bench.design import R2M_ARMS, Arm, BenchDesign, Phase, Plan, RunSpec, phase_runs
from r2m_bench.runner import RESULT_FILE
from r2m_bench.stats import MIN_PAIRS, Verdict, json_float, paired_differences, t_interval, verdict_of

TUNE_WORLD = "length"
TUNE_SEEDS = (0, 1)
"""With the sweep's tuning seeds: the seeds of :data:`TUNE_WORLD` whose runs tune the thresholds."""
ALARM_FILE = "alarm.json"


@dataclass(frozen=True)
class Runs:
    """The bench's runs as series, split, with what was left out."""

    tune: list[ae.RunSeries]
    held_out: list[ae.RunSeries]
    excluded: dict[str, list[str]]
    """Reason -> run names (the gold arm, runs not finished, runs without monitor signals)."""
    monitor_s: list[float]
    """``time/monitor`` of every evaluation read."""


def tuning_seeds(design: BenchDesign) -> tuple[int, ...]:
    return (*TUNE_SEEDS, *design.tuning_seeds)


def _series(spec: RunSpec, rows: list[dict]) -> ae.RunSeries:
    return ae.RunSeries(spec.name, spec.world, spec.algorithm, spec.arm.value, spec.seed, spec.arm in R2M_ARMS,
                        tuple(rows))


def load_runs(design: BenchDesign, root: str | Path, plan: Optional[Plan]) -> Runs:
    """Every finished RL run of ``design`` (the pilot's, the tuning grid's and the test cells' with ``plan``),
    split."""
    tune, held, monitor_s = [], [], []
    excluded: dict[str, list[str]] = {"gold arm (the proxy is gold)": [], "not finished": [],
                                      "no monitor/* signals": []}
    seeds = tuning_seeds(design)
    specs = phase_runs(design, Phase.PILOT)
    if plan is not None:
        specs += [*phase_runs(design, Phase.TUNING, plan), *phase_runs(design, Phase.TEST, plan)]
    for spec in (s for s in specs if s.arm is not Arm.SER):
        run_dir = Path(root) / spec.name
        if spec.arm is Arm.GOLD:
            excluded["gold arm (the proxy is gold)"].append(spec.name)
            continue
        if not (run_dir / RESULT_FILE).is_file():
            excluded["not finished"].append(spec.name)
            continue
        rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if EVAL_MARK in r]
        if not any(k.startswith("monitor/") for r in rows for k in r):
            excluded["no monitor/* signals"].append(spec.name)
            continue
        series = _series(spec, rows)
        ae.check_series(series)
        monitor_s += [float(r["time/monitor"]) for r in rows if "time/monitor" in r]
        (tune if spec.world == TUNE_WORLD and spec.seed in seeds else held).append(series)
    return Runs(tune, held, excluded, monitor_s)


@dataclass(frozen=True)
class Rule:
    """One stopping rule, as tuned, and its outcomes on the held-out runs."""

    name: str
    setting: str
    """What was tuned (thresholds, budget or step), in words."""
    outcomes: list[ae.Outcome]

    @property
    def summary(self) -> ae.Summary:
        return ae.summarize(self.outcomes)


@dataclass(frozen=True)
class Validation:
    runs: Runs
    combined: MonitorConfig
    """The combined rule tuned on the tuning runs (``length``)."""
    combined_rule: Rule
    lowo: dict[str, MonitorConfig]
    """Per held-out world, the combined rule tuned on every run of the other worlds."""
    lowo_rule: Rule
    """The headline: the alarm under the fixed-KL baseline's own protocol (leave one world out)."""
    lowo_without_kl: dict[str, MonitorConfig]
    lowo_without_kl_rule: Rule
    """The same without the KL signal: what the drift signals do on their own (the headline before it joined)."""
    default_rule: Rule
    """rl.monitor's shipped defaults (tuned on every run of an earlier bench: in sample, for reference)."""
    signal_rules: dict[Signal, Rule]
    kl_rule: Rule
    step_rule: Rule
    signal_configs: dict[Signal, MonitorConfig]
    kl_budgets: dict[str, Optional[float]]
    fixed_step: Optional[int]
    combined_in_sample: ae.Summary
    """The combined rule on the tuning runs themselves (how much the held-out figures fall from it)."""
    all_runs: MonitorConfig
    """The combined rule tuned on every run (tuning and held out): the candidate defaults, never scored here."""

    @property
    def alarm_rules(self) -> list[Rule]:
        return [self.lowo_rule, self.lowo_without_kl_rule, self.combined_rule, self.default_rule,
                *self.signal_rules.values()]

    @property
    def rules(self) -> list[Rule]:
        """The alarm rules, then the two baselines."""
        return [*self.alarm_rules, self.kl_rule, self.step_rule]

    @cached_property
    def paired(self) -> dict[str, dict[str, PairedComparison]]:
        """Rule name -> :func:`paired` against the fixed-KL stop: the headline, the rule without kl, the rule
        tuned on `length`; and the control, the fixed-step stop, which shows the instrument can tell two stops
        apart on these runs."""
        return comparisons([self.lowo_rule, self.lowo_without_kl_rule, self.combined_rule, self.step_rule],
                           self.kl_rule, self.runs.held_out)


def _setting(cfg: MonitorConfig) -> str:
    t = ae.thresholds(cfg)
    on = ", ".join(f"{k}={v:g}" for k, v in t.items() if isinstance(v, float))
    return f"{on or 'every signal off'}; min_signals={cfg.min_signals}, patience={cfg.patience}"


def _alarm_rule(name: str, cfg: MonitorConfig, held: Sequence[ae.RunSeries]) -> Rule:
    return Rule(name, _setting(cfg), ae.evaluate(held, lambda rows: ae.alarm_selection(rows, cfg)))


def _lowo_rule(runs: Runs, signals: Sequence[Signal] = tuple(Signal),
               name: str = "alarm, combined (leave one world out)") -> tuple[Rule, dict[str, MonitorConfig]]:
    """The combined rule over ``signals``, tuned per held-out world on the other worlds' runs, scored on that
    world's held-out runs."""
    configs = ae.tune_lowo([*runs.tune, *runs.held_out], sorted({r.world for r in runs.held_out}), signals)
    outs = [ae.score(r, ae.alarm_selection(r.rows, configs[r.world])) for r in runs.held_out]
    words = "; ".join(f"{w}: {_setting(c)}" for w, c in configs.items())
    return Rule(name, words or "none", outs), configs


def _kl_rule(runs: Runs) -> tuple[Rule, dict[str, Optional[float]]]:
    pool = [*runs.tune, *runs.held_out]
    budgets = ae.lowo_kl_budgets(pool, sorted({r.world for r in runs.held_out}))
    outs = [ae.score(r, ae.kl_stop(r.rows, budgets[r.world])) for r in runs.held_out if budgets[r.world] is not None]
    words = ", ".join(f"{w}: {'n/a' if b is None else f'{b:.4g}'}" for w, b in budgets.items())
    return Rule("fixed KL (leave one world out)", f"budget per held-out world, {words or 'none'}", outs), budgets


def validate(runs: Runs) -> Validation:
    """Tune every rule on ``runs.tune`` (fixed KL and the headline alarm: leave one world out) and score it on
    ``runs.held_out``."""
    tuned = ae.tune_rules(runs.tune)
    signal_rules = {s: _alarm_rule(f"{s.value.split('/')[-1]} alone", c, runs.held_out)
                    for s, c in tuned.signals.items()}
    lowo_rule, lowo = _lowo_rule(runs)
    no_kl_rule, no_kl = _lowo_rule(runs, ae.WITHOUT_KL, "alarm, combined without kl (leave one world out)")
    kl, budgets = _kl_rule(runs)
    step = ae.tune_stop(runs.tune, ae.step_candidates(runs.tune), ae.step_stop)
    step_outs = [] if step is None else ae.evaluate(runs.held_out, lambda rows: ae.step_stop(rows, step))
    step_rule = Rule("fixed step", "not tuned (no tuning run)" if step is None else f"step {step}", step_outs)
    combined = tuned.combined
    # The shipped defaults were tuned on every run of the paper bench: on those runs they are in sample.
    defaults = _alarm_rule("alarm, rl.monitor defaults (in sample on the paper bench)", MonitorConfig(), runs.held_out)
    return Validation(runs, combined, _alarm_rule(f"alarm, combined (tuned on `{TUNE_WORLD}`)", combined,
                                                  runs.held_out),
                      lowo, lowo_rule, no_kl, no_kl_rule, defaults,
                      signal_rules, kl, step_rule, tuned.signals, budgets, step,
                      ae.summarize(ae.evaluate(runs.tune, lambda rows: ae.alarm_selection(rows, combined))),
                      ae.tune_rules([*runs.tune, *runs.held_out]).combined)


# ------------------------------------------------------------------------------------------------ reporting


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _num(v: Optional[float], digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _row(label: Sequence[str], s: ae.Summary) -> list[str]:
    counts = (s.runs, s.runs - s.no_gain, s.hits, s.early, s.late, s.no_alarm, s.quiet)
    return [*label, *map(str, counts), _num(s.mean_recovered), _num(s.median_recovered),
            _pct(s.recovered_90pct_share)]


_HEAD = ["runs", "with gain", "hit", "early", "late", "no alarm", "none due", "mean rec.", "median rec.", ">= 90%"]


def _median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


PAIRED_METRICS = {"mean_recovered": lambda rec: rec,
                  "recovered_90pct_share": lambda rec: float(rec >= ae.TARGET_RECOVERED)}
"""Per-run values a paired comparison takes the mean difference of: the recovered share, and whether it is
>= 90% (1 or 0: the mean difference of these is the difference of the two rules' >= 90% shares)."""


def _values(rule: Rule, held: Sequence[ae.RunSeries], metric: str) -> dict[int, Optional[float]]:
    """Held-out run index -> the metric of ``rule``'s outcome there (None: no gain to recover)."""
    index = {r.name: i for i, r in enumerate(held)}
    f = PAIRED_METRICS[metric]
    return {index[o.run.name]: None if o.recovered is None else f(o.recovered) for o in rule.outcomes}


class PairedComparison(NamedTuple):
    """Rule A - rule B over the held-out runs both score, with (world, seed) clusters as the unit."""

    diff_mean: float
    """The mean over clusters of each cluster's mean paired difference (NaN with none)."""
    ci95: tuple[float, float]
    """The t-interval of that mean over the clusters (NaN, NaN below :data:`r2m_bench.stats.MIN_PAIRS` clusters)."""
    verdict: Verdict
    """BETTER or WORSE when the interval excludes 0, else INCONCLUSIVE (no margin: never EQUIVALENT);
    NOT_DECIDABLE below MIN_PAIRS clusters."""
    seeds: tuple[int, ...]
    """The held-out runs (indices) of the complete pairs."""
    dropped: tuple[int, ...]
    clusters: int
    """(world, seed) clusters among the complete pairs."""


def _clustered(a: dict, b: dict, held: Sequence[ae.RunSeries]) -> PairedComparison:
    """A - B with (world, seed) clusters as the unit: a seed's runs in one world share its reward model and prompts,
    so they are not independent. Each cluster's runs are averaged into one difference and the clusters' differences
    get the paired t-interval (:func:`r2m_bench.stats.t_interval`, whose false-decision rate under the null is
    checked by simulation; a percentile bootstrap over 2-10 clusters declares 11-48% of null differences). Each
    cluster weighs the same whatever its number of runs. Not counted: the thresholds of a left-out world are fitted
    once and shared by its clusters, a variance the interval does not see."""
    diffs, dropped = paired_differences(a, b)
    by_cluster: dict[tuple, list[float]] = {}
    for k, d in diffs.items():
        by_cluster.setdefault((held[k].world, held[k].seed), []).append(d)
    iv = t_interval([statistics.fmean(v) for v in by_cluster.values()])
    lo, hi = iv.ci
    verdict = (verdict_of(iv.diff_mean, iv.ci, margin=0.0, significant=lo > 0 or hi < 0) if iv.decidable
               else Verdict.NOT_DECIDABLE)
    return PairedComparison(iv.diff_mean, iv.ci, verdict, tuple(diffs), dropped, len(by_cluster))


def paired(rule: Rule, base: Rule, held: Sequence[ae.RunSeries]) -> dict[str, PairedComparison]:
    """``rule`` - ``base`` over the held-out runs both score (paired by run), per :data:`PAIRED_METRICS`: the
    mean difference over (world, seed) clusters with its t-interval and verdict (:func:`_clustered`)."""
    return {m: _clustered(_values(rule, held, m), _values(base, held, m), held) for m in PAIRED_METRICS}


def comparisons(rules: Sequence[Rule], base: Rule,
                held: Sequence[ae.RunSeries]) -> dict[str, dict[str, PairedComparison]]:
    """Rule name -> :func:`paired` (rule - ``base``) for each of ``rules``."""
    return {r.name: paired(r, base, held) for r in rules}


def _paired_json(p: PairedComparison) -> dict:
    """One comparison for alarm.json (no interval: nulls, since JSON has no NaN)."""
    return {"diff_mean": json_float(p.diff_mean), "ci95": [json_float(c) for c in p.ci95],
            "verdict": p.verdict.value, "pairs": len(p.seeds), "clusters": p.clusters, "dropped": len(p.dropped)}


def headline(v: Validation) -> dict:
    """The headline keys of alarm.json: the leave-one-world-out alarm against the fixed-KL stop tuned the
    same way, on the same held-out runs. It beats the stop when the paired 95% interval of the mean recovered
    share's difference lies above 0 (a point estimate above the stop's inside the noise does not)."""
    beats = v.paired[v.lowo_rule.name]["mean_recovered"].verdict is Verdict.BETTER
    comb = v.lowo_rule.summary
    share = comb.recovered_90pct_share
    return {"held_out_runs": comb.runs, "recovered_90pct_share": share, "beats_fixed_kl": beats,
            "target_met": bool(beats and share is not None and share >= ae.TARGET_SHARE)}


def alarm_json(v: Validation, design: BenchDesign) -> dict:
    """alarm.json (its keys: docs/MONITOR.md)."""
    return {
        **headline(v),
        "preset": design.name,
        "split": {"tune": f"world {TUNE_WORLD}, seeds {list(tuning_seeds(design))}",
                  "held_out": f"every other run (other worlds; {TUNE_WORLD}'s other seeds)",
                  "tune_runs": len(v.runs.tune), "held_out_names": [r.name for r in v.runs.held_out]},
        "excluded": {k: len(names) for k, names in v.runs.excluded.items()},
        "headline_rule": "combined_lowo",
        "combined_lowo": {"thresholds": {w: ae.thresholds(c) for w, c in v.lowo.items()},
                          "held_out": v.lowo_rule.summary.as_dict(), "per_world": _per_world(v.lowo_rule.outcomes)},
        "combined_lowo_without_kl": {"thresholds": {w: ae.thresholds(c) for w, c in v.lowo_without_kl.items()},
                                     "held_out": v.lowo_without_kl_rule.summary.as_dict(),
                                     "per_world": _per_world(v.lowo_without_kl_rule.outcomes)},
        "combined": {"thresholds": ae.thresholds(v.combined), "held_out": v.combined_rule.summary.as_dict(),
                     "tuning_runs_in_sample": v.combined_in_sample.as_dict()},
        "default_rule": {"thresholds": ae.thresholds(MonitorConfig()), "held_out": v.default_rule.summary.as_dict()},
        "tuned_on_all_runs": {"thresholds": ae.thresholds(v.all_runs),
                              "note": "the candidate defaults: tuned on every run, so not scored here"},
        "per_signal": {s.value: {"thresholds": ae.thresholds(v.signal_configs[s]), **r.summary.as_dict(),
                                 "per_world": _per_world(r.outcomes)} for s, r in v.signal_rules.items()},
        "paired_vs_fixed_kl": {name: {m: _paired_json(p) for m, p in c.items()} for name, c in v.paired.items()},
        "baselines": {"fixed_kl_lowo": {"budgets": v.kl_budgets, **v.kl_rule.summary.as_dict()},
                      "fixed_step": {"step": v.fixed_step, **v.step_rule.summary.as_dict()}},
        "held_out_outcomes": _per_run(v),
        "time_monitor_median_s": _median(v.runs.monitor_s),
        "time_monitor_evals": len(v.runs.monitor_s),
        "target": {"recovered": ae.TARGET_RECOVERED, "share_of_runs": ae.TARGET_SHARE},
    }


def _per_run(v: Validation) -> list[dict]:
    """Each held-out run: the headline rule's outcome, and the fixed-KL stop's kept step and share."""
    kl = {o.run.name: o for o in v.kl_rule.outcomes}
    out = []
    for o in v.lowo_rule.outcomes:
        r, k = o.run, kl.get(o.run.name)
        out.append({"name": r.name, "world": r.world, "algorithm": r.algorithm, "arm": r.arm, "seed": r.seed,
                    "r2m": r.r2m, "peak_step": o.peak_step, "alarm_step": o.fired_step,
                    "selected_step": o.selected_step, "timing": o.timing.value, "recovered": o.recovered,
                    "fixed_kl_step": None if k is None else k.selected_step,
                    "fixed_kl_recovered": None if k is None else k.recovered})
    return out


def _per_world(outcomes: Sequence[ae.Outcome]) -> dict[str, dict]:
    worlds = sorted({o.run.world for o in outcomes})
    return {w: ae.summarize([o for o in outcomes if o.run.world == w]).as_dict() for w in worlds}


def _groups_table(outcomes: Sequence[ae.Outcome]) -> str:
    keys = sorted({(o.run.world, o.run.algorithm, o.run.r2m) for o in outcomes})
    rows = [_row([w, a, "on" if on else "off"], ae.summarize([o for o in outcomes
                                                               if (o.run.world, o.run.algorithm, o.run.r2m) ==
                                                               (w, a, on)])) for w, a, on in keys]
    return format_table(["world", "algorithm", "R2M", *_HEAD], rows, markdown=True) if rows else "(no held-out run)"


def _signal_world_table(v: Validation) -> str:
    worlds = sorted({r.world for r in v.runs.held_out})
    rows = []
    for rule in v.alarm_rules:
        cells = []
        for w in worlds:
            s = ae.summarize([o for o in rule.outcomes if o.run.world == w])
            cells.append(f"{_pct(s.recovered_90pct_share)} / {_num(s.mean_recovered)} / "
                         f"{s.hits}-{s.early}-{s.late}-{s.no_alarm}")
        rows.append([rule.name, *cells])
    return format_table(["rule", *worlds], rows, markdown=True) if worlds else "(no held-out run)"


def _miss(o: ae.Outcome) -> str:
    """Why a run's kept checkpoint recovers < 90%: no alarm (the final policy), or kept before / after the peak."""
    if o.fired_step is None:
        return "no alarm"
    return "kept before the peak" if o.selected_step < o.peak_step else "kept after the peak"


def _failures(v: Validation) -> str:
    """Per alarm rule and held-out world below the 80% share: the most common reason of its misses."""
    if not v.runs.held_out:
        return "- no held-out run has finished: nothing to judge yet."
    lines = []
    for rule in v.alarm_rules:
        for w in sorted({r.world for r in v.runs.held_out}):
            outs = [o for o in rule.outcomes if o.run.world == w]
            s = ae.summarize(outs)
            if s.recovered_90pct_share is None or s.recovered_90pct_share >= ae.TARGET_SHARE:
                continue
            misses = [_miss(o) for o in outs if o.recovered is not None and o.recovered < ae.TARGET_RECOVERED]
            worst = max(sorted(set(misses)), key=misses.count)
            lines.append(f"- {rule.name}, `{w}`: {_pct(s.recovered_90pct_share)} recover >= 90% "
                         f"(mean {_num(s.mean_recovered)}); of its {len(misses)} misses, {misses.count(worst)} "
                         f"{worst}")
    comb, kl = v.lowo_rule.summary, v.kl_rule.summary
    if not headline(v)["beats_fixed_kl"]:
        d = v.paired[v.lowo_rule.name]["mean_recovered"]
        lines.append(f"- the leave-one-world-out combined rule's mean recovered share ({_num(comb.mean_recovered)}) "
                     f"does not beat the leave-one-world-out fixed-KL stop's ({_num(kl.mean_recovered)}): "
                     f"{_interval(d)}, {d.verdict.value}")
    return "\n".join(lines) if lines else "- nowhere: every alarm rule meets the 80% share in every held-out world."


def _interval(p: PairedComparison) -> str:
    """``+mean [lo, hi]``, or why there is no interval."""
    if p.verdict is Verdict.NOT_DECIDABLE:
        return f"n/a ({p.clusters} (world, seed) clusters; {MIN_PAIRS} needed)"
    return f"{p.diff_mean:+.3f} [{p.ci95[0]:+.3f}, {p.ci95[1]:+.3f}]"


def _paired_table(v: Validation) -> str:
    """Each compared rule - the fixed-KL stop: mean recovered and >= 90% share, with intervals and verdicts."""
    rows = []
    for name, c in v.paired.items():
        rec, share = c["mean_recovered"], c["recovered_90pct_share"]
        rows.append([name, f"{len(rec.seeds)} / {rec.clusters}", _interval(rec), rec.verdict.value, _interval(share),
                     share.verdict.value])
    return format_table(["rule - fixed KL (leave one world out)", "paired runs / clusters",
                         "mean rec., over clusters [95% CI]", "verdict", ">= 90% share [95% CI]", "verdict"], rows,
                        markdown=True)


def alarm_section(v: Validation, design: BenchDesign, rel: str) -> str:
    """The report's markdown section."""
    h = headline(v)
    excl = "; ".join(f"{k}: {len(n)}" for k, n in v.runs.excluded.items())
    verdict = ("met" if h["target_met"] else "NOT met")
    comb = v.lowo_rule.summary
    d = v.paired[v.lowo_rule.name]["mean_recovered"]
    return (
        f"## Over-optimisation alarm: validation on held-out runs\n\n"
        f"Scored on {len(v.runs.held_out)} held-out runs (the worlds other than `{TUNE_WORLD}`, and `{TUNE_WORLD}`'s "
        f"seeds outside {list(tuning_seeds(design))}). The headline rule and the fixed-KL stop are tuned leave one "
        f"world out: for the held-out runs of world w, on every run of the other worlds. The other rules are tuned on "
        f"the {len(v.runs.tune)} tuning runs (`{TUNE_WORLD}`, seeds {list(tuning_seeds(design))}). Left out: {excl}. "
        f"A rule keeps the evaluation before the alarm's onset (`checkpoints/best-before-alarm`), or the final "
        f"policy when no alarm fires; *rec.* is that checkpoint's gold as a share of the SFT -> peak gold gain; "
        f"*hit* = the alarm fires within one evaluation interval of the gold peak; *none due* counts the runs "
        f"without an alarm whose gold peaked within one interval of the end. Runs whose gold never rose above "
        f"SFT's have no gain to recover: counted in *runs*, not in the recovered figures. Method: "
        f"[docs/MONITOR.md](MONITOR.md#validation-in-the-gold-reward-world); figures in `{rel}/{ALARM_FILE}`.\n\n"
        f"**Target (>= 90% recovered in >= 80% of held-out runs, and beating the fixed-KL stop): {verdict}.** "
        f"The combined rule tuned leave one world out recovers >= 90% in {_pct(comb.recovered_90pct_share)} of the "
        f"{comb.runs - comb.no_gain} held-out runs with a gain; it "
        f"{'beats' if h['beats_fixed_kl'] else 'does not beat'} the leave-one-world-out fixed-KL stop on the mean "
        f"recovered share (paired over the held-out runs: {_interval(d)}, {d.verdict.value}). The monitor's "
        f"cost: median `time/monitor` "
        f"{_num(_median(v.runs.monitor_s), 3)} s per evaluation ({len(v.runs.monitor_s)} evaluations).\n\n"
        f"### Every rule on the held-out runs\n\n"
        + format_table(["rule", *_HEAD], [_row([r.name], r.summary) for r in v.rules], markdown=True)
        + "\n\n### Against the fixed-KL stop, paired by run\n\nEach rule's recovered share minus the "
          "leave-one-world-out fixed-KL stop's on the same held-out run, with (world, seed) clusters as the "
          "unit: the mean over clusters of each cluster's mean difference with its paired t 95% interval "
          "(at least 5 clusters), and whether the interval lies above 0 "
          "(better), below (worse) or around it (inconclusive); the *>= 90% share* column is the difference of "
          "the shares of runs recovering >= 90%. The fixed-step stop is the control: that the instrument can tell "
          "two stopping rules apart on these runs.\n\n" + _paired_table(v)
        + f"\n\nIn sample, on its {v.combined_in_sample.runs} tuning runs, the combined rule's mean recovered share "
        f"is {_num(v.combined_in_sample.mean_recovered)} and {_pct(v.combined_in_sample.recovered_90pct_share)} "
        f"of them recover >= 90%."
        + "\n\nSettings (the defaults are not tuned here):\n\n"
        + "\n".join(f"- {r.name}: {r.setting}" for r in v.rules)
        + f"\n\nTuned on every run (tuning and held out; the candidate for rl.monitor's defaults, which this "
          f"section cannot score): {_setting(v.all_runs)}."
        + "\n\n### The headline rule by world, algorithm and R2M\n\n" + _groups_table(v.lowo_rule.outcomes)
        + "\n\n### Each signal alone, by held-out world\n\nCells: share recovering >= 90% / mean recovered / "
          "hit-early-late-no alarm.\n\n" + _signal_world_table(v)
        + "\n\n### Where the target is missed\n\n" + _failures(v) + "\n")


def write_alarm_validation(design: BenchDesign, root: str | Path, plan: Optional[Plan], art: Path,
                           rel: str) -> str:
    """Validate, write ``<art>/alarm.json``, return the report section."""
    v = validate(load_runs(design, root, plan))
    atomic_write_text(Path(art) / ALARM_FILE, json.dumps(alarm_json(v, design), indent=1, allow_nan=False))
    return alarm_section(v, design, rel)
