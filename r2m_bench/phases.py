"""What each phase of the design decides from its runs, and what the design costs.

* :func:`budgets_from_pilot` -- phase A: per world, the KL at vanilla's gold peak (median over the tuning seeds),
  its multiples rounded to 2 significant digits, the test runs' step cap, and the evaluation noise against the
  seed-to-seed spread (``docs/bench/budgets.json``);
* :func:`choose_setting` -- phase B: the grid point whose oracle gains most gold over the pilot's vanilla runs at
  matched KL (:func:`matched_gain`: the primary budget, or the largest KL both runs reached), among the points whose
  fusion moves (ties: the smaller lr), with each point's fusion movement (``docs/bench/tuning.json``);
* :func:`estimate_cost` -- the design's wall time per phase from per-step costs, printed before running.

Input: run results as :class:`r2m_bench.trajectories.RunRecord`\\ s (one per finished run).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Optional, Sequence

from r2m.eval.trajectory import Trajectory, gold_at_kl
from r2m_bench.design import (
    ENSEMBLE_OFFSETS,
    ENSEMBLES,
    MIN_WEIGHT_CHANGE,
    R2M_ARMS,
    Arm,
    BenchDesign,
    Phase,
    Plan,
    RunSpec,
    SweepPoint,
    phase_runs,
)
from r2m_bench.trajectories import EvalNoise


def round_sig(x: float, digits: int = 2) -> float:
    """``x`` rounded to ``digits`` significant digits (0 stays 0)."""
    return 0.0 if x == 0 else round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def peak_kl(traj: Trajectory) -> float:
    """The evaluation KL at the trajectory's highest gold (the first such point)."""
    i = max(range(len(traj.golds)), key=lambda j: (traj.golds[j], -j))
    return float(traj.kls[i])


def steps_to_kl(traj: Trajectory, kl: float) -> Optional[int]:
    """The first evaluation step whose KL reaches ``kl`` (None: never)."""
    return next((int(s) for s, k in zip(traj.steps, traj.kls) if k >= kl), None)


class WorldBudgets(NamedTuple):
    budgets: tuple[float, ...]
    cap: int
    peak_kls: tuple[float, ...]
    """Per tuning seed, the KL at vanilla's gold peak."""
    steps_to_top: Optional[float]
    """Median steps of the pilot runs to the largest budget (None: a run never reached it)."""
    seed_sd: Optional[float]
    """SD across the tuning seeds of gold at the primary budget."""
    eval_noise: Optional[EvalNoise]
    """The pilot runs' median standard error of one evaluation point's gold, and the samples per prompt it drew
    (None: no samples recorded)."""


def budgets_from_pilot(design: BenchDesign, trajs: Mapping[str, Sequence[Trajectory]],
                       noise: Mapping[str, EvalNoise] = {}) -> dict[str, WorldBudgets]:
    """Per world (``trajs``: world -> the pilot's vanilla trajectories): budgets = the multiples of the median KL
    at gold's peak, rounded to 2 significant digits; cap = ``cap_factor`` x the median steps to the largest
    budget, or ``cap_factor`` x the pilot's steps when a pilot run never reached it."""
    out = {}
    for world, ts in trajs.items():
        if not ts:
            raise ValueError(f"bench pilot: no finished vanilla runs in {world}")
        peaks = tuple(peak_kl(t) for t in ts)
        base = statistics.median(peaks)
        if not base > 0:
            raise ValueError(f"bench pilot {world}: vanilla's gold peaks at KL {base} (at the start); budgets "
                             "need a positive KL: raise the pilot's steps or the learning rate")
        budgets = tuple(round_sig(m * base) for m in design.budget_multiples)
        reach = [steps_to_kl(t, budgets[-1]) for t in ts]
        steps = statistics.median(reach) if all(r is not None for r in reach) else None
        cap = int(math.ceil(design.cap_factor * (steps if steps is not None else design.pilot_steps)))
        primary = budgets[design.budget_multiples.index(design.primary_multiple)]
        golds = [g for g in (gold_at_kl(t, primary).gold for t in ts) if g is not None]
        sd = statistics.stdev(golds) if len(golds) >= 2 else None
        out[world] = WorldBudgets(budgets, max(cap, 1), peaks, steps, sd, noise.get(world))
    return out


def samples_needed(noise: Optional[EvalNoise], seed_sd: Optional[float]) -> Optional[int]:
    """Samples per prompt at which an evaluation point's standard error falls under half the seed-to-seed SD
    (the error shrinks as 1/sqrt(samples)); None without both numbers. ``seed_sd`` is the SD measured on the tuning
    seeds, which itself holds the evaluation noise, so with more samples it shrinks too: the count is a lower
    bound when the two are close."""
    if noise is None or not seed_sd:
        return None
    return max(1, math.ceil(noise.samples_per_prompt * (noise.se / (seed_sd / 2)) ** 2))


def plan_of(budgets: Mapping[str, WorldBudgets], setting: Optional[SweepPoint] = None) -> Plan:
    return Plan({w: b.budgets for w, b in budgets.items()}, {w: b.cap for w, b in budgets.items()}, setting)


def budgets_json(design: BenchDesign, budgets: Mapping[str, WorldBudgets]) -> dict:
    """``docs/bench/budgets.json``: per world the budgets, the primary, the cap and what they came from."""
    worlds = {}
    for w, b in budgets.items():
        n = b.eval_noise
        ratio = n.se / b.seed_sd if n is not None and b.seed_sd else None
        worlds[w] = {"budgets": list(b.budgets), "primary": b.budgets[design.budget_multiples.index(
                     design.primary_multiple)], "step_cap": b.cap, "peak_kl_per_seed": list(b.peak_kls),
                     "steps_to_largest_budget": b.steps_to_top, "gold_seed_sd": b.seed_sd,
                     "eval_point_se": n.se if n is not None else None, "eval_se_over_seed_sd": ratio,
                     "eval_samples_per_prompt": n.samples_per_prompt if n is not None else None,
                     "eval_samples_per_prompt_needed": samples_needed(n, b.seed_sd)}
    return {"design": design.name, "multiples": list(design.budget_multiples), "primary_multiple":
            design.primary_multiple, "tuning_seeds": list(design.tuning_seeds), "worlds": worlds}


TUNE_MIN_KL_SHARE = 0.5
"""A tuning seed's gain is read at min(primary budget, the largest KL both its runs reached); below this share of the
primary budget it is not read (None): too far from the budget the setting is carried to."""


class GridPoint(NamedTuple):
    setting: SweepPoint
    gains: tuple[Optional[float], ...]
    """Per tuning seed: oracle gold - vanilla gold at the KL in ``kls`` (None: not read)."""
    kls: tuple[Optional[float], ...]
    """Per tuning seed: the KL the gain is read at, min(primary budget, the largest KL both runs reached): an arm
    whose reward moves the policy slowly may stop at its step cap short of the budget, and dropping it would
    select against the settings that learn."""
    fusion_change: tuple[Optional[float], ...]
    """Per tuning seed: the oracle run's last ``r2m/fusion_weight_change``."""

    @property
    def mean_gain(self) -> Optional[float]:
        return None if any(g is None for g in self.gains) else sum(self.gains) / len(self.gains)

    @property
    def learns(self) -> bool:
        """The fusion moved (median relative weight change >= MIN_WEIGHT_CHANGE) on its tuning seeds."""
        moves = [m for m in self.fusion_change if m is not None]
        return bool(moves) and statistics.median(moves) >= MIN_WEIGHT_CHANGE


def matched_gain(oracle: Optional[Trajectory], vanilla: Optional[Trajectory],
                 budget: float) -> tuple[Optional[float], Optional[float]]:
    """(gain, KL): oracle gold - vanilla gold at k = min(``budget``, the largest KL both reached); (None, k) when k
    is under ``TUNE_MIN_KL_SHARE`` x budget or a run is missing."""
    if oracle is None or vanilla is None:
        return None, None
    k = min(budget, max(oracle.kls), max(vanilla.kls))
    if k < TUNE_MIN_KL_SHARE * budget:
        return None, k
    a, b = gold_at_kl(oracle, k).gold, gold_at_kl(vanilla, k).gold  # None only where a run starts past k
    return (None, k) if a is None or b is None else (a - b, k)


def grid_points(design: BenchDesign, plan: Plan, oracle: Mapping[str, tuple[Optional[Trajectory], Optional[float]]],
                vanilla: Mapping[int, Optional[Trajectory]], budget: float) -> list[GridPoint]:
    """Each grid point's gains (``oracle``: run name -> (trajectory, fusion weight change); ``vanilla``: tuning
    seed -> the pilot's trajectory; ``budget``: the sweep world's primary budget), by :func:`matched_gain`."""
    specs = phase_runs(design, Phase.TUNING, plan)
    out = []
    for p in design.sweep.points():
        mine = [s for s in specs if s.name.endswith(tuple(f"-{p.tag}-s{seed}" for seed in design.tuning_seeds))]
        gains, kls, moves = [], [], []
        for s in mine:
            traj, move = oracle.get(s.name, (None, None))
            gain, k = matched_gain(traj, vanilla.get(s.seed), budget)
            gains.append(gain)
            kls.append(k)
            moves.append(move)
        out.append(GridPoint(p, tuple(gains), tuple(kls), tuple(moves)))
    return out


def choose_setting(points: Sequence[GridPoint]) -> Optional[SweepPoint]:
    """The complete point with the largest mean gain among those whose fusion moves (:attr:`GridPoint.learns`), or
    among all complete points when none moves; ties by the smaller lr. None: none complete."""
    ok = [p for p in points if p.mean_gain is not None]
    pool = [p for p in ok if p.learns] or ok
    if not pool:
        return None
    return min(pool, key=lambda p: (-round(p.mean_gain, 12), p.setting.lr)).setting


def tuning_json(points: Sequence[GridPoint], chosen: Optional[SweepPoint], seeds: Sequence[int]) -> dict:
    """``docs/bench/tuning.json``: the grid's table and the chosen setting."""
    return {"score": "oracle gold - vanilla gold (pair_choice=gold) at min(primary budget, the largest KL both runs "
                     f"reached; not read under {TUNE_MIN_KL_SHARE:g} x the budget), mean over tuning seeds; among "
                     f"the settings whose fusion moves (median relative weight change >= {MIN_WEIGHT_CHANGE:g}) "
                     "when any does",
            "seeds": list(seeds), "chosen": None if chosen is None else chosen._asdict(),
            "chosen_learns": next((p.learns for p in points if p.setting == chosen), None),
            "grid": [{**p.setting._asdict(), "gains": list(p.gains), "kls": list(p.kls), "mean_gain": p.mean_gain,
                      "fusion_weight_change": list(p.fusion_change), "learns": p.learns} for p in points]}


# ---------------------------------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work on the benchmark machine (2 CPU cores, one thread per run)."""

    rl_step_s: float = 0.5
    """One RLOO step in a world at one thread (0.49 s measured on `length`, 2026-12-01)."""
    r2m_factor: float = 1.14
    """R2M's whole-step time over RLOO's (1.00-1.14 measured)."""
    r2m_steps_factor: float = 1.7
    """R2M-family arms travel less far per step (final KL 0.08 against vanilla's 0.13-0.18 in v1's runs): their
    steps to a KL, over vanilla's (assumed from those KLs)."""
    ensemble_factor: float = 1.15
    """Four RMs score each batch instead of one (assumed)."""
    eval_s: float = 1.5
    """One evaluation at 4 samples per prompt (assumed: 0.26 s monitor + generation and scoring)."""
    eval_every: int = 10
    run_overhead_s: float = 10.0
    rm_build_s: float = 20.0
    """One world RM per (world, RM seed) (19 s measured)."""
    sft_build_s: float = 600.0
    ser_run_s: float = 30.0
    """One SER RM run with a 100-pair validation set (12-16 s measured at v1's sizes; rounded up)."""


class PhaseCost(NamedTuple):
    runs: int
    steps: int
    rm_builds: int
    seconds: float


def _run_s(model: CostModel, spec: RunSpec, steps: float) -> tuple[float, float]:
    if spec.arm is Arm.SER:
        return 0.0, model.ser_run_s
    if spec.arm in R2M_ARMS and spec.phase is not Phase.PILOT:
        steps, factor = steps * model.r2m_steps_factor, model.r2m_factor
    else:
        factor = model.ensemble_factor if spec.arm in ENSEMBLES else 1.0
    evals = steps / model.eval_every + 1
    return steps, steps * model.rl_step_s * factor + evals * model.eval_s + model.run_overhead_s


def _rms(specs: Sequence[RunSpec]) -> set[tuple[str, int]]:
    out = set()
    for s in specs:
        offsets = ENSEMBLE_OFFSETS if s.arm in ENSEMBLES else (0,)
        out |= {(s.world, s.seed + k) for k in offsets}
    return out


def estimate_cost(design: BenchDesign, plan: Optional[Plan] = None, model: CostModel = CostModel(),
                  workers: int = 1) -> dict[str, PhaseCost]:
    """Per phase (and ``total``): runs, RL steps, new RM builds and wall seconds with ``workers`` one-thread
    processes. Before the pilot (``plan`` None) the test runs are assumed to stop at ``expected_test_steps``
    (tuning: half that); with a plan, at the pilot's steps to the budget (cap / cap_factor)."""
    assumed = plan or Plan({w: (1.0, 2.0, 4.0) for w in design.ser_worlds + tuple(c.world for c in design.cells)},
                           {w: design.expected_test_steps for w in
                            design.ser_worlds + tuple(c.world for c in design.cells)}, design.sweep.points()[0])
    seen: set = set()
    out = {}
    for phase in Phase:
        specs = phase_runs(design, phase, assumed)
        steps, secs = 0.0, 0.0
        for s in specs:
            typical = design.pilot_steps if phase is Phase.PILOT else assumed.caps[s.world] / (
                design.cap_factor if plan is not None else 1.0)
            if phase is Phase.TUNING:
                typical /= 2  # stopped at the primary budget, half the largest
            n, t = _run_s(model, s, typical)
            steps, secs = steps + n, secs + t
        new = _rms(specs) - seen
        seen |= new
        build = len(new) * model.rm_build_s + (model.sft_build_s if phase is Phase.PILOT else 0.0)
        out[phase.value] = PhaseCost(len(specs), int(steps), len(new), secs / workers + build)
    out["total"] = PhaseCost(*(sum(getattr(c, f) for c in out.values()) for f in PhaseCost._fields))
    return out


def format_cost(cost: Mapping[str, PhaseCost], workers: int) -> str:
    lines = [f"bench cost estimate ({workers} worker{'s' if workers > 1 else ''}):"]
    for k, c in cost.items():
        lines.append(f"  {k:7s} {c.runs:4d} runs  {c.steps:7d} RL steps  {c.rm_builds:4d} RM builds  "
                     f"{c.seconds / 3600:5.2f} h")
    return "\n".join(lines)
