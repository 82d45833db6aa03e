"""The benchmark's design as data: worlds x algorithms x arms x seeds.

Nothing here runs anything. A :class:`BenchDesign` lists :class:`Cell`\\ s (one world, one algorithm, its arms,
its seeds, a KL regime); :func:`design_runs` turns it into :class:`RunSpec`\\ s, each a run name and the
``load_config`` overrides of one RL run, in a fixed order (so a resumed bench finds its finished runs by name);
:func:`sweep_runs` gives the R2M hyper-parameter sweep on the tuning seeds (item 5) and :func:`best_setting` the
setting carried to the test seeds. :data:`CLAIMS` are the 13 claims of item 7, each naming the two arms and the
metric it compares; :func:`estimate_cost` sizes a design. The presets are :data:`SMOKE` and :data:`PAPER`
(:data:`PRESETS`).

Overrides of one run, in this order (a later one wins): the world preset (``configs/world/worlds/<w>.yaml``),
the design's base, the algorithm, the arm, the KL regime, the carried R2M setting, then the seed
(``run.seed=s`` and ``world.rm_seed=s``: a seed sets the RM's training pairs, head init and batch order as well
as RL sampling, so a verdict holds across reward models) and the run name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import yaml

from r2m.world.ceiling import WORLD_PRESETS, WORLDS
from r2m_bench.frontier import Claim

ALGORITHMS: dict[str, str] = {"RLOO": "rloo", "GRPO": "grpo", "ReMax": "remax", "REINFORCE++": "reinforce_pp"}
"""Table name -> ``rl.algorithm``."""


class Arm(str, enum.Enum):
    """One method of the benchmark (an RL run), or an SER arm (read from the SER runs)."""

    VANILLA = "vanilla"
    R2M = "r2m"
    WO_TRAIN = "wo_train"
    SCALE_CONTROL = "scale_control"
    PRETRAINED_RM = "pretrained_rm"
    ITERATIVE_HEAD = "iterative_head"
    NOISE = "noise"
    NO_BT = "no_bt"
    NO_GRE = "no_gre"
    ORACLE = "oracle"
    """Positive control: R2M's update with the gold reward's winner and loser."""
    RANDOM = "random"
    """Negative control: R2M's update with a random winner and loser."""
    GOLD = "gold"
    """The ceiling: RL on the gold reward itself."""
    SER = "ser"
    """SER's RM runs (``ser.ppo=false``): Loop 0, the kept loop and Full are metrics of one run."""


R2M_ON = ("reward.r2m.enabled=true",)
ARM_OVERRIDES: dict[Arm, tuple[str, ...]] = {
    Arm.VANILLA: (),
    Arm.R2M: R2M_ON,
    Arm.WO_TRAIN: (*R2M_ON, "reward.r2m.ablation=frozen"),
    Arm.SCALE_CONTROL: ("reward.baseline=scale_control",),
    Arm.PRETRAINED_RM: ("reward.baseline=pretrained_rm",),
    Arm.ITERATIVE_HEAD: ("reward.baseline=iterative_head",),
    Arm.NOISE: (*R2M_ON, "reward.r2m.ablation=noise"),
    Arm.NO_BT: (*R2M_ON, "reward.r2m.ablation=no_bt"),
    Arm.NO_GRE: (*R2M_ON, "reward.r2m.ablation=no_gre"),
    Arm.ORACLE: (*R2M_ON, "reward.r2m.pair_choice=gold"),
    Arm.RANDOM: (*R2M_ON, "reward.r2m.pair_choice=random"),
    Arm.GOLD: ("reward.source=gold",),
}
"""The overrides of each RL arm (SER has none: it is not an RL run)."""

R2M_ARMS = frozenset({Arm.R2M, Arm.WO_TRAIN, Arm.NOISE, Arm.NO_BT, Arm.NO_GRE, Arm.ORACLE, Arm.RANDOM})
"""Arms that carry the swept R2M setting (lr, init, Omega)."""

CORE_ARMS = (Arm.VANILLA, Arm.R2M, Arm.WO_TRAIN, Arm.SCALE_CONTROL, Arm.ORACLE, Arm.RANDOM)
"""RLOO's core rows and controls, run in every world."""
RL_ARMS = tuple(a for a in Arm if a is not Arm.SER)
OTHER_WORLD_ARMS = (Arm.VANILLA, Arm.R2M, Arm.ORACLE, Arm.RANDOM)
"""The paper preset's rows outside `length` (the budget): vanilla, R2M and both controls of the update."""


class KLRegime(str, enum.Enum):
    """How far runs travel along KL."""

    FIXED = "fixed"
    """The fixed beta of the config: methods end at different KLs; compared at matched KL budgets."""
    TARGETED = "targeted"
    """The adaptive controller (``rl.kl_adaptive``) driven to the same ``rl.kl_target`` for every method."""


def kl_overrides(regime: KLRegime, target: float) -> tuple[str, ...]:
    """The KL-targeted arm: the same adaptive controller and target for every method; nothing for FIXED."""
    if KLRegime(regime) is KLRegime.FIXED:
        return ()
    if not target > 0:
        raise ValueError(f"bench design kl_target: expected > 0 for the targeted regime, got {target!r}")
    return ("rl.kl_adaptive=true", f"rl.kl_target={target}")


def _flatten(prefix: str, node: object, out: list[str], where: Path) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out, where)
    elif isinstance(node, (list, tuple)):
        raise ValueError(f"{where}: {prefix}: a world preset holds scalars only, got a list")
    else:
        out.append(f"{prefix}={'null' if node is None else node}")


def world_overrides(name: str, root: Path = WORLD_PRESETS) -> tuple[str, ...]:
    """The fields of ``configs/world/worlds/<name>.yaml`` as ``a.b=c`` overrides, in file order."""
    path = root / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"bench world {name!r}: expected one of {sorted(p.stem for p in root.glob('*.yaml'))} "
                         f"(no {path})")
    out: list[str] = []
    _flatten("", yaml.safe_load(path.read_text()) or {}, out, path)
    return tuple(out)


def seed_overrides(seed: int) -> tuple[str, ...]:
    """A bench seed sets RL sampling and the reward model: ``run.seed`` and ``world.rm_seed``."""
    return (f"run.seed={seed}", f"world.rm_seed={seed}")


# ---------------------------------------------------------------------------------------------------- claims


class ArmMetric(NamedTuple):
    """One side of a claim: an arm and the metric read from its runs (None: the claim's default metric)."""

    arm: Arm
    key: Optional[str] = None
    """A scalar of the run's summary (``rm_acc/r2m_after``, ``ser/test_acc``); None: gold (at KL budgets,
    final and peak)."""


class ClaimSpec(NamedTuple):
    """A claim of the papers: ``a`` minus ``b``, paired over seeds."""

    claim: Claim
    a: ArmMetric
    b: ArmMetric
    paper: str
    """What the paper says (the expected verdict, in words)."""


def _gold(a: Arm, b: Arm, claim: Claim, paper: str) -> ClaimSpec:
    return ClaimSpec(claim, ArmMetric(a), ArmMetric(b), paper)


CLAIMS: tuple[ClaimSpec, ...] = (
    _gold(Arm.R2M, Arm.VANILLA, Claim.R2M_VS_VANILLA, "R2M > vanilla (R2M Tables 1, 2, 4)"),
    _gold(Arm.R2M, Arm.PRETRAINED_RM, Claim.R2M_VS_PRETRAINED_RM, "R2M > Pretrained RM (Table 2)"),
    _gold(Arm.R2M, Arm.ITERATIVE_HEAD, Claim.R2M_VS_ITERATIVE_HEAD, "R2M > Iterative RM-head (Table 2)"),
    _gold(Arm.WO_TRAIN, Arm.VANILLA, Claim.WO_TRAIN_VS_VANILLA, "w/o Train < vanilla (Table 4)"),
    _gold(Arm.SCALE_CONTROL, Arm.VANILLA, Claim.SCALE_CONTROL_VS_VANILLA,
          "control: vanilla x omega(t) vs vanilla (should match w/o Train if its gain is the scale)"),
    _gold(Arm.NOISE, Arm.R2M, Claim.NOISE_VS_R2M, "w/ Noise < R2M (Table 4)"),
    _gold(Arm.NO_BT, Arm.R2M, Claim.NO_BT_VS_R2M, "w/o BT < R2M (Table 4)"),
    _gold(Arm.NO_GRE, Arm.R2M, Claim.NO_GRE_VS_R2M, "w/o GRE < R2M (Table 4)"),
    _gold(Arm.ORACLE, Arm.VANILLA, Claim.ORACLE_VS_VANILLA, "positive control: must be > vanilla"),
    _gold(Arm.RANDOM, Arm.VANILLA, Claim.RANDOM_VS_VANILLA, "negative control: no better than vanilla"),
    ClaimSpec(Claim.SER_VS_FULL, ArmMetric(Arm.SER, "ser/test_acc"), ArmMetric(Arm.SER, "ser/full_test_acc"),
              "SER (15% labels) ~ Full (SER Table 1)"),
    ClaimSpec(Claim.SER_VS_LOOP0, ArmMetric(Arm.SER, "ser/test_acc"), ArmMetric(Arm.SER, "ser/loop0_test_acc"),
              "SER > Loop 0 (SER Table 1)"),
    ClaimSpec(Claim.R2M_RM_ACC_VS_VANILLA, ArmMetric(Arm.R2M, "rm_acc/r2m_after"),
              ArmMetric(Arm.R2M, "rm_acc/vanilla"), "R2M's RM accuracy after > vanilla RM (R2M Table 3)"),
)
"""The 13 claims the benchmark tests, in table order."""


# ---------------------------------------------------------------------------------------------------- design


class Cell(NamedTuple):
    """One block of runs: every arm x seed of one (world, algorithm, KL regime)."""

    world: str
    algorithm: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    regime: KLRegime = KLRegime.FIXED


class SweepPoint(NamedTuple):
    """One R2M setting of the sweep (item 5)."""

    lr: float
    init: str
    omega_floor: float

    def overrides(self) -> tuple[str, ...]:
        return (f"reward.r2m.lr={self.lr}", f"reward.r2m.init={self.init}",
                f"reward.r2m.omega_floor={self.omega_floor}")


class Sweep(NamedTuple):
    """R2M's lr x init x Omega on tuning seeds in one world and algorithm, never on the test seeds."""

    world: str
    algorithm: str
    lrs: tuple[float, ...]
    inits: tuple[str, ...]
    omega_floors: tuple[float, ...]
    seeds: tuple[int, ...]

    def points(self) -> list[SweepPoint]:
        return [SweepPoint(lr, i, o) for lr in self.lrs for i in self.inits for o in self.omega_floors]


class SERMode(NamedTuple):
    """One SER setting of the bench: its runs are one more "algorithm" of the SER claims."""

    name: str
    """The algorithm column of the verdicts and SER Table 1 (``SER`` for the defaults)."""
    tag: str
    """Its part of the run names (``ser`` for the defaults, so that old runs keep their names)."""
    overrides: tuple[str, ...]
    """``ser.*`` overrides after the design's ``ser_overrides``."""


SER_DEFAULT = SERMode("SER", "ser", ())
SER_PLUS_SEED = SERMode("SER+seed", "ser_plus_seed", ("ser.retrain_data=filtered_plus_seed",))
"""The other retraining mode: each loop also retrains on the seed's human-labelled pairs (docs/SER.md)."""
SER_LOW_TAU = SERMode("SER tau_delta=0.15", "ser_tau015", ("ser.tau_delta=0.15",))
"""A sensitivity arm, not a tuned setting: at the default tau_Delta 0.3 no bench run reaches Status 2 (the
validation Delta_p after a marginal Status-1 loop was 0.19-0.29 in the published paper-preset run), at 0.15 it can. The
Status-2 filter's delta follows tau_Delta (``ser.delta`` unset)."""


@dataclass(frozen=True)
class BenchDesign:
    """A whole benchmark: RL cells, the sweep, the SER runs, the KL budgets and the base overrides."""

    name: str
    cells: tuple[Cell, ...]
    base: tuple[str, ...]
    """Overrides of every run after the world preset (steps, evaluation grid, model sizes)."""
    steps: int
    """``rl.steps`` of every RL run (also in ``base``; here for the cost estimate)."""
    sweep: Optional[Sweep]
    ser_worlds: tuple[str, ...]
    ser_seeds: tuple[int, ...]
    ser_overrides: tuple[str, ...] = ()
    ser_modes: tuple[SERMode, ...] = (SER_DEFAULT,)
    """The SER settings run in every SER world and seed (each decides the SER claims on its own)."""
    budgets: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    """KL budgets of the matched-KL comparison."""
    headline_budget: float = 0.2
    """The budget of the verdict table (fixed before any run: not chosen on the results)."""
    kl_target: float = 0.2
    """``rl.kl_target`` of the targeted regime, the same for every method."""

    def __post_init__(self) -> None:
        if self.headline_budget not in self.budgets:
            raise ValueError(f"bench design {self.name}: headline_budget {self.headline_budget} is not one of "
                             f"the budgets {self.budgets}")
        for c in self.cells:
            if c.world not in WORLDS or c.algorithm not in ALGORITHMS or Arm.SER in c.arms:
                raise ValueError(f"bench design {self.name}: bad cell {c}; expected a world of {WORLDS}, an "
                                 f"algorithm of {tuple(ALGORITHMS)} and RL arms only")


class RunSpec(NamedTuple):
    """One RL run of the design."""

    name: str
    world: str
    algorithm: str
    arm: Arm
    seed: int
    regime: KLRegime
    overrides: tuple[str, ...]
    """For ``load_config(None, overrides)`` (the bench adds run.root, logging and progress)."""


def run_name(design: str, world: str, algorithm: str, arm: Arm, seed: int, regime: KLRegime,
             setting: Optional[SweepPoint] = None) -> str:
    """``bench14-<design>-<world>-<algo>-<arm>[-kl]-s<seed>`` (a sweep run adds its setting)."""
    algo = "".join(ch for ch in algorithm.lower() if ch.isalnum())
    kl = "-kl" if KLRegime(regime) is KLRegime.TARGETED else ""
    tag = f"-lr{setting.lr:g}-{setting.init}-om{setting.omega_floor:g}" if setting is not None else ""
    return f"bench14-{design}-{world}-{algo}-{Arm(arm).value}{kl}{tag}-s{seed}"


def _run(design: BenchDesign, cell: Cell, arm: Arm, seed: int, setting: Optional[SweepPoint],
         tag: Optional[SweepPoint] = None) -> RunSpec:
    carries = setting is not None and arm in R2M_ARMS
    carried = setting.overrides() if carries else ()
    # The carried setting is in the name: a resumed bench never reuses a run made with another setting.
    name = run_name(design.name, cell.world, cell.algorithm, arm, seed, cell.regime,
                    tag or (setting if carries else None))
    overrides = (*world_overrides(cell.world), *design.base, f"rl.algorithm={ALGORITHMS[cell.algorithm]}",
                 *ARM_OVERRIDES[arm], *kl_overrides(cell.regime, design.kl_target), *carried,
                 *seed_overrides(seed), f"run.name={name}")
    return RunSpec(name, cell.world, cell.algorithm, arm, seed, cell.regime, overrides)


def design_runs(design: BenchDesign, setting: Optional[SweepPoint] = None) -> list[RunSpec]:
    """Every RL run of the cells, cell by cell, arm by arm, seed by seed; R2M-family arms carry ``setting``
    (the sweep's best, :func:`best_setting`; None: the config's R2M defaults)."""
    return [_run(design, c, arm, seed, setting) for c in design.cells for arm in c.arms for seed in c.seeds]


def sweep_runs(design: BenchDesign) -> list[RunSpec]:
    """The sweep's R2M runs: every setting x tuning seed (their vanilla rows are not needed: the setting is
    chosen on R2M's own gold at the headline budget)."""
    s = design.sweep
    if s is None:
        return []
    cell = Cell(s.world, s.algorithm, (Arm.R2M,), s.seeds)
    return [_run(design, cell, Arm.R2M, seed, p, tag=p) for p in s.points() for seed in s.seeds]


def best_setting(gold_by_run: Mapping[str, Optional[float]], design: BenchDesign) -> Optional[SweepPoint]:
    """The sweep point with the highest mean gold over its tuning seeds (``gold_by_run``: run name -> gold at
    the headline budget, None where not reached; a point with any seed missing is not eligible). None when no
    point is eligible."""
    s = design.sweep
    if s is None:
        return None
    best: tuple[float, Optional[SweepPoint]] = (float("-inf"), None)
    cell = Cell(s.world, s.algorithm, (Arm.R2M,), s.seeds)
    for p in s.points():
        vals = [gold_by_run.get(_run(design, cell, Arm.R2M, seed, p, tag=p).name) for seed in s.seeds]
        if all(v is not None for v in vals) and sum(vals) / len(vals) > best[0]:
            best = (sum(vals) / len(vals), p)
    return best[1]


class ClaimCell(NamedTuple):
    """A claim decided in one (world, algorithm)."""

    world: str
    algorithm: str
    spec: ClaimSpec


def claims_in(design: BenchDesign) -> list[ClaimCell]:
    """(world, algorithm, claim) triples the design can decide: both arms in one cell (SER claims: the SER
    worlds, algorithm ``SER``). Fixed-regime cells only; the targeted regime is reported beside them."""
    out = []
    for c in design.cells:
        if c.regime is KLRegime.FIXED:
            out += [ClaimCell(c.world, c.algorithm, spec) for spec in CLAIMS
                    if spec.a.arm is not Arm.SER and {spec.a.arm, spec.b.arm} <= set(c.arms)]
    out += [ClaimCell(w, m.name, spec) for w in design.ser_worlds for m in design.ser_modes
            for spec in CLAIMS if spec.a.arm is Arm.SER]
    return out


# ---------------------------------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostModel:
    """Seconds per unit of work on the benchmark machine (2 CPU cores, runs one after another)."""

    rl_step_s: float = 0.5
    """One RLOO step in the world (measured: 0.49 s at one thread, the `length` world's RLOO, 2026-12-01; about
    0.6 s was measured earlier at two threads on a loaded machine)."""
    r2m_factor: float = 1.14
    """R2M's whole-step time over RLOO's (docs/BENCHMARKS.md cost arm, 2 threads: 1.14; 1.00-1.14 measured)."""
    algorithm_factor: Mapping[str, float] = None  # type: ignore[assignment]
    """Per algorithm, step time over RLOO's (ReMax's greedy baseline rollout: assumed 1.3; others 1.0)."""
    run_overhead_s: float = 10.0
    """Per run: loading, 11 evaluations with the monitor (``time/monitor`` 0.26 s each), Table 3 (assumed)."""
    rm_build_s: float = 20.0
    """One world RM (BT on the preset's pairs) and the monitor's check RM per (world, RM seed), and one
    Pretrained-RM per seed (measured: 19 s for the data, RM and check RM of `length` seed 0, one thread)."""
    sft_build_s: float = 600.0
    """The shared SFT policy and RM backbone, once (assumed)."""
    ser_run_s: float = 20.0
    """One SER RM run (Loop 0, self-labelling loops, Full; ``ser.ppo=false``): 12-16 s measured on the default
    world with every SER default (the earlier 150-step bench's SER runs, wall_s of 3 seeds), rounded up for the Status-2
    loops now reachable; 2.8 s on the smoke preset's tiny world (one loop)."""

    def __post_init__(self) -> None:
        if self.algorithm_factor is None:
            object.__setattr__(self, "algorithm_factor", {"RLOO": 1.0, "GRPO": 1.0, "ReMax": 1.3, "REINFORCE++": 1.0})


class CostEstimate(NamedTuple):
    runs: int
    """RL runs (cells and sweep)."""
    rl_steps: int
    rl_s: float
    rm_builds: int
    """World RMs plus Pretrained-RM trainings."""
    build_s: float
    ser_s: float
    total_s: float


def _step_s(model: CostModel, spec: RunSpec) -> float:
    factor = model.r2m_factor if spec.arm in R2M_ARMS else 1.0
    return model.rl_step_s * factor * model.algorithm_factor[spec.algorithm]


def estimate_cost(design: BenchDesign, model: CostModel = CostModel(), workers: int = 1) -> CostEstimate:
    """The design's wall time: RL steps at their per-step cost, a fixed overhead per run, one RM per (world, RM
    seed) and per Pretrained-RM (world, seed), the shared SFT stages, and the SER runs. With ``workers`` one-thread
    processes (``r2m bench run --workers``) the runs share out evenly; the builds are counted in full (the
    first runs wait on them)."""
    runs = design_runs(design) + sweep_runs(design)
    rl_s = sum(design.steps * _step_s(model, r) + model.run_overhead_s for r in runs)
    rms = {(r.world, r.seed) for r in runs} | {(w, s) for w in design.ser_worlds for s in design.ser_seeds}
    pretrained = {(r.world, r.seed) for r in runs if r.arm is Arm.PRETRAINED_RM}
    builds = len(rms) + len(pretrained)
    build_s = builds * model.rm_build_s + model.sft_build_s
    ser_s = len(ser_runs(design)) * model.ser_run_s
    total = (rl_s + ser_s) / workers + build_s
    return CostEstimate(len(runs), design.steps * len(runs), rl_s, builds, build_s, ser_s, total)


# ---------------------------------------------------------------------------------------------------- presets

_TINY = ("world.n_sft=1500", "world.n_pref_train=400", "world.n_pref_eval=100", "world.n_rl_prompts=200",
         "world.n_eval_prompts=16", "world.n_pref_policy=100", "policy.arch.hidden_size=32",
         "policy.arch.num_layers=1", "policy.arch.num_heads=2", "policy.arch.intermediate_size=64",
         "reward.arch.hidden_size=24", "reward.arch.num_layers=1", "reward.arch.num_heads=2",
         "reward.arch.intermediate_size=48", "sft.batch_size=32", "rm.batch_size=32", "rm.epochs=1",
         "eval.samples_per_prompt=1")

SMOKE = BenchDesign(
    name="smoke",
    # Every new path, in CI (well under 3 min on 2 cores): all 12 RL arms in `length`, both KL regimes, the
    # other worlds' vanilla and R2M rows, a 2-point sweep on 2 tuning seeds, SER in one world. Two seeds: the
    # least a paired interval needs.
    cells=(Cell("length", "RLOO", RL_ARMS, (0, 1)),
           Cell("length", "RLOO", (Arm.VANILLA, Arm.ORACLE), (0, 1), KLRegime.TARGETED),
           *(Cell(w, "RLOO", (Arm.VANILLA, Arm.R2M), (0, 1)) for w in ("noisy", "blind", "ser_headroom"))),
    base=(*_TINY, "rl.steps=4", "rl.eval_every=2", "rl.prompts_per_step=4", "rl.k=2"),
    steps=4,
    sweep=Sweep("length", "RLOO", (1e-5, 1e-4), ("random",), (0.6,), (100, 101)),
    ser_worlds=("length",),
    ser_seeds=(0, 1),
    ser_overrides=("ser.max_loops=1", "ser.tau_delta=0.001"),
    ser_modes=(SER_DEFAULT, SER_PLUS_SEED),
    # 4 tiny steps move the policy by a KL of about 1e-4 (measured on the smoke run): budgets to match.
    budgets=(5e-5, 1e-4, 2e-4),
    headline_budget=5e-5,
    kl_target=1e-4,
)

_SEEDS = (0, 1, 2, 3, 4)
_LENGTH_ALL = tuple(a for a in RL_ARMS if a is not Arm.GOLD)

PAPER = BenchDesign(
    name="paper",
    cells=(Cell("length", "RLOO", _LENGTH_ALL, _SEEDS),
           Cell("length", "RLOO", (Arm.GOLD,), (0, 1)),  # the ceiling: two seeds are enough to place it
           # all four algorithms in `length`: the other three with R2M and vanilla, on 3 seeds
           *(Cell("length", a, (Arm.VANILLA, Arm.R2M), (0, 1, 2)) for a in ("GRPO", "ReMax", "REINFORCE++")),
           Cell("length", "RLOO", (Arm.VANILLA, Arm.R2M, Arm.ORACLE), _SEEDS, KLRegime.TARGETED),
           *(Cell(w, "RLOO", OTHER_WORLD_ARMS, _SEEDS) for w in ("noisy", "blind"))),
    # 100 steps, evaluated every 10. Measured after the fidelity fixes (vanilla RLOO, `length`, seed 0, one
    # thread): KL 0.06 at step 50 with gold still rising, the gold peak at steps 50-60 (KL 0.06-0.09), then
    # gold 0.72 at KL 0.23 (step 80) and 0.67 at KL 0.32 (step 90). So 100 steps cover the rise, the peak
    # and the fall through every budget (the matched-KL verdicts need all three, the alarm's validation the
    # fall); 50 steps never reached the headline budget.
    base=("rl.steps=100", "rl.eval_every=10"),
    steps=100,
    sweep=Sweep("length", "RLOO", (1e-6, 1e-5, 1e-4), ("random", "matched"), (0.6, 0.8), (100, 101, 102)),
    # SER in `blind` too (its RMs read the masked prompt, r2m/world/view.py); both retraining modes and the
    # Status-2 sensitivity arm; 5 seeds like the headline rows. 60 runs of 4-16 s.
    ser_worlds=("length", "noisy", "blind", "ser_headroom"),
    ser_seeds=_SEEDS,
    ser_modes=(SER_DEFAULT, SER_PLUS_SEED, SER_LOW_TAU),
    budgets=(0.05, 0.1, 0.2, 0.3),
    headline_budget=0.1,
    kl_target=0.2,
)

PRESETS: dict[str, BenchDesign] = {"smoke": SMOKE, "paper": PAPER}
"""``r2m bench run --preset <name>`` (once the split bench reads this module)."""


def design_preset(name: str) -> BenchDesign:
    if name not in PRESETS:
        raise ValueError(f"bench preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


def ser_runs(design: BenchDesign) -> list[RunSpec]:
    """SER's RM runs (``ser.ppo=false``): one per SER world, mode and seed; the seed sets the RM's pairs too."""
    out = []
    for w in design.ser_worlds:
        for mode in design.ser_modes:
            for seed in design.ser_seeds:
                name = f"bench14-{design.name}-{w}-{mode.tag}-s{seed}"
                overrides = (*world_overrides(w), *design.base, *design.ser_overrides, *mode.overrides,
                             "ser.ppo=false", *seed_overrides(seed), f"run.name={name}")
                out.append(RunSpec(name, w, mode.name, Arm.SER, seed, KLRegime.FIXED, overrides))
    return out
