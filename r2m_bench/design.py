"""The benchmark's design as data: three phases of runs, the claims they decide, and the presets.

Nothing here runs anything. A :class:`BenchDesign` lists :class:`Cell`\\ s (one world, one algorithm, its arms,
its seeds, a KL regime, a phase). The phases run in order, each after the previous one's runs have finished:

* ``pilot`` (phase A): vanilla RLOO on the tuning seeds in every RL world, to the step cap; the KL budgets of each
  world (1x, 2x, 4x the KL at vanilla's gold peak) come from these runs (:mod:`r2m_bench.phases`);
* ``tuning`` (phase B): the oracle arm over R2M's lr x init x Omega grid on the tuning seeds, scored by its gain
  over the pilot's vanilla runs at the primary budget; the chosen setting is carried to every R2M-family arm;
* ``test`` (phase C): every arm on the test seeds, each run stopped once its evaluation KL passes the world's
  largest budget (``rl.stop_at_kl``) or at the step cap; and the SER runs.

:func:`phase_runs` turns a phase into :class:`RunSpec`\\ s (a run name and the ``load_config`` overrides of one
run) given a :class:`Plan` (the budgets, caps and setting that the earlier phases decided). Run names hold no
number that a phase computes, except the carried R2M setting, so a resumed bench finds its finished runs by name.

Overrides of one run, in this order (a later one wins): the world preset (``configs/world/worlds/<w>.yaml``),
the design's base, the phase's step cap and KL stop, the algorithm, the arm, the KL regime, the carried R2M
setting, then the seed (``run.seed=s`` and ``world.rm_seed=s``) and the run name.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

import yaml

from r2m.world.ceiling import WORLD_PRESETS, WORLDS

ALGORITHMS: dict[str, str] = {"RLOO": "rloo", "GRPO": "grpo", "ReMax": "remax", "REINFORCE++": "reinforce_pp"}
"""Table name -> ``rl.algorithm``."""
RL_WORLDS = ("length", "noisy", "blind")
"""The worlds with RL cells (``ser_headroom`` is an SER world only)."""


class Arm(str, enum.Enum):
    """One method of the benchmark (an RL run), or SER (its RM runs)."""

    VANILLA = "vanilla"
    R2M = "r2m"
    ORACLE = "oracle"
    """Positive control: R2M's update with the gold reward's winner and loser."""
    RANDOM = "random"
    """Negative control: R2M's update with a random winner and loser."""
    WO_TRAIN = "wo_train"
    SCALE_CONTROL = "scale_control"
    ITERATIVE_HEAD = "iterative_head"
    GOLD = "gold"
    """The ceiling: RL on the gold reward itself."""
    LADDER_10 = "ladder_0.1"
    """Calibration ladder: (1 - λ)·RM + λ·gold, λ = 0.1 (a known-better reward model)."""
    LADDER_25 = "ladder_0.25"
    LADDER_50 = "ladder_0.5"
    ENSEMBLE_MEAN = "ensemble_mean"
    """Coste et al. (2023): the mean of 4 RMs trained on different seeds."""
    ENSEMBLE_WORST = "ensemble_worst"
    ENSEMBLE_UWO = "ensemble_uwo"
    SER = "ser"
    """SER's RM runs (``ser.ppo=false``): Loop 0, the kept loop and Full are metrics of one run."""


R2M_ON = ("reward.r2m.enabled=true",)
ARM_OVERRIDES: dict[Arm, tuple[str, ...]] = {
    Arm.VANILLA: (),
    Arm.R2M: R2M_ON,
    Arm.ORACLE: (*R2M_ON, "reward.r2m.pair_choice=gold"),
    Arm.RANDOM: (*R2M_ON, "reward.r2m.pair_choice=random"),
    Arm.WO_TRAIN: (*R2M_ON, "reward.r2m.ablation=frozen"),
    Arm.SCALE_CONTROL: ("reward.baseline=scale_control",),
    Arm.ITERATIVE_HEAD: ("reward.baseline=iterative_head",),
    Arm.GOLD: ("reward.source=gold",),
    Arm.LADDER_10: ("reward.gold_mix=0.1",),
    Arm.LADDER_25: ("reward.gold_mix=0.25",),
    Arm.LADDER_50: ("reward.gold_mix=0.5",),
    Arm.ENSEMBLE_MEAN: ("reward.ensemble_mode=mean",),
    Arm.ENSEMBLE_WORST: ("reward.ensemble_mode=worst",),
    Arm.ENSEMBLE_UWO: ("reward.ensemble_mode=uwo",),
}
"""The fixed overrides of each RL arm (the ensembles' members depend on the seed: :func:`arm_overrides`)."""

LADDER = {Arm.LADDER_10: 0.1, Arm.LADDER_25: 0.25, Arm.LADDER_50: 0.5}
"""Rung -> λ."""
ENSEMBLES = (Arm.ENSEMBLE_MEAN, Arm.ENSEMBLE_WORST, Arm.ENSEMBLE_UWO)
ENSEMBLE_OFFSETS = (0, 1000, 2000, 3000)
"""An ensemble of seed s: the world RMs of seeds s, s+1000, s+2000, s+3000."""
R2M_ARMS = frozenset({Arm.R2M, Arm.ORACLE, Arm.RANDOM, Arm.WO_TRAIN})
"""Arms that carry the tuned R2M setting (lr, init, Omega)."""
CARRIED_ARMS = R2M_ARMS | {Arm.ITERATIVE_HEAD, Arm.SCALE_CONTROL}
"""Arms whose run name carries the setting: the Iterative RM-head takes R2M's lr, the scale control its Omega."""
MIN_WEIGHT_CHANGE = 1e-3
"""A fusion whose relative weight change is below this did not learn: an R2M-family arm's claims are inactive, and
the tuning does not carry such a setting while one that moves exists."""
FUSION_MOVE = "r2m/fusion_weight_change"
"""The run's scalar of the fusion's relative weight change (the cross-attention alone, not the score head)."""


def arm_overrides(arm: Arm, seed: int) -> tuple[str, ...]:
    """The arm's overrides at ``seed`` (an ensemble's members are the RMs of its seed plus the offsets)."""
    out = ARM_OVERRIDES[Arm(arm)]
    if arm in ENSEMBLES:
        members = ",".join(str(seed + k) for k in ENSEMBLE_OFFSETS)
        out = (*out, f"reward.ensemble_seeds=[{members}]")
    return out


class KLRegime(str, enum.Enum):
    FIXED = "fixed"
    """The config's fixed beta: methods are compared at matched KL budgets along their trajectories."""
    TARGETED = "targeted"
    """The adaptive controller driven to the primary budget (per-token units, horizon 10 batches)."""


class Phase(str, enum.Enum):
    PILOT = "pilot"
    TUNING = "tuning"
    TEST = "test"


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
    """One side of a claim: an arm and the scalar read from its runs (None: gold at the claim's KL)."""

    arm: Arm
    key: Optional[str] = None


class ClaimSpec(NamedTuple):
    """A claim: ``a`` minus ``b``, paired over seeds, in one world."""

    claim: str
    a: ArmMetric
    b: ArmMetric
    primary: bool
    """In the Holm family (fixed before the runs); otherwise exploratory."""
    paper: str
    """What the paper says or the control must show."""
    regime: KLRegime = KLRegime.FIXED
    """TARGETED: read on final gold of the KL-targeted runs."""


def _gold(claim: str, a: Arm, b: Arm, paper: str, primary: bool = False,
          regime: KLRegime = KLRegime.FIXED) -> ClaimSpec:
    return ClaimSpec(claim, ArmMetric(a), ArmMetric(b), primary, paper, regime)


CLAIMS: tuple[ClaimSpec, ...] = (
    _gold("r2m_vs_vanilla", Arm.R2M, Arm.VANILLA, "R2M > vanilla (R2M Tables 1, 2, 4)", primary=True),
    _gold("oracle_vs_vanilla", Arm.ORACLE, Arm.VANILLA, "positive control: the update can learn", primary=True),
    ClaimSpec("ser_vs_loop0", ArmMetric(Arm.SER, "ser/test_acc"), ArmMetric(Arm.SER, "ser/loop0_test_acc"), True,
              "SER > Loop 0 (SER Table 1)"),
    *(_gold(f"{a.value}_vs_vanilla", a, Arm.VANILLA, f"ladder λ = {lam:g}: a known-better RM, must be > vanilla")
      for a, lam in LADDER.items()),
    *(_gold(f"{a.value}_vs_vanilla", a, Arm.VANILLA, "Coste et al. 2023: ensembles mitigate over-optimisation")
      for a in ENSEMBLES),
    *(_gold(f"r2m_vs_{a.value}", Arm.R2M, a, "R2M beside the reference mitigation") for a in ENSEMBLES),
    _gold("random_vs_vanilla", Arm.RANDOM, Arm.VANILLA, "negative control: no better than vanilla"),
    _gold("wo_train_vs_vanilla", Arm.WO_TRAIN, Arm.VANILLA, "w/o Train < vanilla (Table 4)"),
    _gold("scale_control_vs_vanilla", Arm.SCALE_CONTROL, Arm.VANILLA, "vanilla x omega(t): the scale alone"),
    _gold("r2m_vs_iterative_head", Arm.R2M, Arm.ITERATIVE_HEAD, "R2M > Iterative RM-head (Table 2)"),
    _gold("gold_vs_vanilla", Arm.GOLD, Arm.VANILLA, "the ceiling: room above vanilla"),
    _gold("r2m_vs_vanilla_kl_target", Arm.R2M, Arm.VANILLA, "R2M > vanilla at one KL target",
          regime=KLRegime.TARGETED),
    _gold("oracle_vs_vanilla_kl_target", Arm.ORACLE, Arm.VANILLA, "oracle > vanilla at one KL target",
          regime=KLRegime.TARGETED),
    ClaimSpec("r2m_rm_acc_vs_vanilla", ArmMetric(Arm.R2M, "rm_acc/r2m_after"), ArmMetric(Arm.R2M, "rm_acc/vanilla"),
              False, "R2M's RM after > vanilla RM (R2M Table 3)"),
    ClaimSpec("r2m_rm_acc_after_vs_before", ArmMetric(Arm.R2M, "rm_acc/r2m_after"),
              ArmMetric(Arm.R2M, "rm_acc/r2m_before"), False, "R2M's RM after > before (R2M Table 3)"),
    ClaimSpec("ser_vs_full", ArmMetric(Arm.SER, "ser/test_acc"), ArmMetric(Arm.SER, "ser/full_test_acc"), False,
              "SER (15% labels) ~ Full (SER Table 1)"),
)
"""Every claim, primaries first. A claim is decided in each world whose cells hold both arms."""

MARGINS: dict[str, float] = {"gold": 0.01, "rm_accuracy": 0.01}
"""Equivalence margins per metric kind."""


# ---------------------------------------------------------------------------------------------------- design


class Cell(NamedTuple):
    """One block of runs: every arm x seed of one (world, algorithm, KL regime) in one phase."""

    world: str
    algorithm: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    regime: KLRegime = KLRegime.FIXED
    phase: Phase = Phase.TEST
    secondary: bool = False
    """Trimmed first when the cost estimate exceeds the budget (never a headline cell)."""


class SweepPoint(NamedTuple):
    """One R2M setting of the tuning grid."""

    lr: float
    init: str
    omega_floor: float

    def overrides(self) -> tuple[str, ...]:
        return (f"reward.r2m.lr={self.lr}", f"reward.r2m.init={self.init}",
                f"reward.r2m.omega_floor={self.omega_floor}")

    @property
    def tag(self) -> str:
        return f"lr{self.lr:g}-{self.init}-om{self.omega_floor:g}"


def carried_overrides(arm: Arm, s: SweepPoint) -> tuple[str, ...]:
    """The tuned setting on an arm: all of it on the R2M family, the lr on the Iterative RM-head (the paper uses
    R2M's), Omega on the scale control (its omega(t) is R2M's)."""
    if arm in R2M_ARMS:
        return s.overrides()
    if arm is Arm.ITERATIVE_HEAD:
        return (f"reward.r2m.lr={s.lr}",)
    if arm is Arm.SCALE_CONTROL:
        return (f"reward.r2m.omega_floor={s.omega_floor}",)
    return ()


class Sweep(NamedTuple):
    """R2M's lr x init x Omega, scored by the oracle's gain over vanilla on the tuning seeds of one world."""

    world: str
    lrs: tuple[float, ...]
    inits: tuple[str, ...]
    omega_floors: tuple[float, ...]

    def points(self) -> list[SweepPoint]:
        return [SweepPoint(lr, i, o) for lr in self.lrs for i in self.inits for o in self.omega_floors]


@dataclass(frozen=True)
class BenchDesign:
    """A whole benchmark: the phases' cells, the tuning grid, the SER runs and the shared overrides."""

    name: str
    cells: tuple[Cell, ...]
    base: tuple[str, ...]
    """Overrides of every run after the world preset (evaluation grid, model sizes)."""
    pilot_steps: int
    """``rl.steps`` of the pilot runs (vanilla, to the cap, no KL stop)."""
    sweep: Sweep
    tuning_seeds: tuple[int, ...]
    ser_worlds: tuple[str, ...]
    ser_seeds: tuple[int, ...]
    ser_overrides: tuple[str, ...] = ()
    budget_multiples: tuple[float, ...] = (1.0, 2.0, 4.0)
    """The budgets of a world: these multiples of the KL at vanilla's gold peak (pilot median)."""
    primary_multiple: float = 2.0
    cap_factor: float = 5.0
    """The test runs' step cap: this times the pilot's (median) steps to the largest budget. An arm whose reward moves
    the policy slowly runs to it: in `length`, the oracle at the carried setting reached KL 0.116-0.125 in 270 steps
    (3x), short of the 0.13 primary budget, while vanilla passes 0.26 in about 90."""
    expected_test_steps: int = 100
    """Before the pilot: the assumed steps to the largest budget (for the cost estimate)."""
    extra: tuple[str, ...] = field(default=())
    """Overrides of every run after the base (``r2m bench`` passes ``run.threads`` here)."""

    def __post_init__(self) -> None:
        if self.primary_multiple not in self.budget_multiples:
            raise ValueError(f"bench design {self.name}: primary_multiple {self.primary_multiple} is not one of "
                             f"{self.budget_multiples}")
        if set(self.tuning_seeds) & {s for c in self.cells if c.phase is Phase.TEST for s in c.seeds}:
            raise ValueError(f"bench design {self.name}: a tuning seed is also a test seed")
        for c in self.cells:
            if c.world not in WORLDS or c.algorithm not in ALGORITHMS or Arm.SER in c.arms:
                raise ValueError(f"bench design {self.name}: bad cell {c}; expected a world of {WORLDS}, an "
                                 f"algorithm of {tuple(ALGORITHMS)} and RL arms only")


class Plan(NamedTuple):
    """What the earlier phases decided: per world, the budgets (ascending) and the test runs' step cap; the
    carried R2M setting (None before phase B)."""

    budgets: Mapping[str, tuple[float, ...]]
    caps: Mapping[str, int]
    setting: Optional[SweepPoint] = None

    def primary(self, design: BenchDesign, world: str) -> float:
        return self.budgets[world][design.budget_multiples.index(design.primary_multiple)]


class RunSpec(NamedTuple):
    """One run of the design."""

    name: str
    phase: Phase
    world: str
    algorithm: str
    arm: Arm
    seed: int
    regime: KLRegime
    overrides: tuple[str, ...]
    """For ``load_config(None, overrides)`` (the runner adds run.root, logging and progress)."""


def run_name(design: str, phase: Phase, world: str, algorithm: str, arm: Arm, seed: int,
             regime: KLRegime = KLRegime.FIXED, setting: Optional[SweepPoint] = None) -> str:
    """``b2-<design>-<phase>-<world>-<algo>-<arm>[-kl][-<setting>]-s<seed>``."""
    algo = "".join(ch for ch in algorithm.lower() if ch.isalnum())
    kl = "-kl" if KLRegime(regime) is KLRegime.TARGETED else ""
    tag = f"-{setting.tag}" if setting is not None else ""
    return f"b2-{design}-{Phase(phase).value}-{world}-{algo}-{Arm(arm).value}{kl}{tag}-s{seed}"


def _spec(design: BenchDesign, cell: Cell, arm: Arm, seed: int, plan: Optional[Plan],
          setting: Optional[SweepPoint]) -> RunSpec:
    stops: tuple[str, ...] = (f"rl.steps={design.pilot_steps}",)
    if cell.phase is not Phase.PILOT:
        if plan is None or cell.world not in plan.budgets:
            raise ValueError(f"bench design {design.name}: the {cell.phase.value} runs of {cell.world} need the "
                             "pilot's budgets (run phase A first)")
        stop = plan.primary(design, cell.world) if cell.phase is Phase.TUNING else plan.budgets[cell.world][-1]
        stops = (f"rl.steps={plan.caps[cell.world]}", f"rl.stop_at_kl={stop:g}")
    kl: tuple[str, ...] = ()
    if cell.regime is KLRegime.TARGETED:
        kl = ("rl.kl_adaptive=true", "rl.kl_target_level=token", f"rl.kl_target={plan.primary(design, cell.world):g}",
              "rl.kl_horizon_batches=10")
    carried = carried_overrides(arm, setting) if setting is not None else ()
    name = run_name(design.name, cell.phase, cell.world, cell.algorithm, arm, seed, cell.regime,
                    setting if carried else None)
    overrides = (*world_overrides(cell.world), *design.base, *design.extra, *stops,
                 f"rl.algorithm={ALGORITHMS[cell.algorithm]}", *arm_overrides(arm, seed), *kl, *carried,
                 *seed_overrides(seed), f"run.name={name}")
    return RunSpec(name, cell.phase, cell.world, cell.algorithm, arm, seed, cell.regime, overrides)


def pilot_cells(design: BenchDesign) -> tuple[Cell, ...]:
    return tuple(c for c in design.cells if c.phase is Phase.PILOT)


def tuning_cells(design: BenchDesign) -> tuple[Cell, ...]:
    """Phase B: the oracle on the tuning seeds in the sweep's world (its vanilla rows are the pilot's runs)."""
    return (Cell(design.sweep.world, "RLOO", (Arm.ORACLE,), design.tuning_seeds, phase=Phase.TUNING),)


def phase_runs(design: BenchDesign, phase: Phase, plan: Optional[Plan] = None) -> list[RunSpec]:
    """Every run of ``phase``, cell by cell, arm by arm, seed by seed. Tuning: every grid point's oracle runs.
    Test: the RL cells with ``plan.setting`` carried, then the SER runs."""
    phase = Phase(phase)
    if phase is Phase.PILOT:
        return [_spec(design, c, a, s, None, None) for c in pilot_cells(design) for a in c.arms for s in c.seeds]
    if phase is Phase.TUNING:
        return [_spec(design, c, a, s, plan, p) for p in design.sweep.points() for c in tuning_cells(design)
                for a in c.arms for s in c.seeds]
    rl = [_spec(design, c, a, s, plan, plan.setting if plan else None) for c in design.cells
          if c.phase is Phase.TEST for a in c.arms for s in c.seeds]
    return rl + ser_runs(design)


def ser_runs(design: BenchDesign) -> list[RunSpec]:
    """SER's RM runs (``ser.ppo=false``): one per SER world and seed; the seed sets the RM's pairs too."""
    out = []
    for w in design.ser_worlds:
        for seed in design.ser_seeds:
            name = f"b2-{design.name}-test-{w}-ser-s{seed}"
            overrides = (*world_overrides(w), *design.base, *design.extra, *design.ser_overrides, "ser.ppo=false",
                         *seed_overrides(seed), f"run.name={name}")
            out.append(RunSpec(name, Phase.TEST, w, "SER", Arm.SER, seed, KLRegime.FIXED, overrides))
    return out


def trimmed(design: BenchDesign) -> BenchDesign:
    """The design without its secondary cells (the first trim when the estimate exceeds the budget)."""
    from dataclasses import replace

    return replace(design, cells=tuple(c for c in design.cells if not c.secondary))


# ---------------------------------------------------------------------------------------------------- presets

_TINY = ("world.n_sft=1500", "world.n_pref_train=400", "world.n_pref_eval=100", "world.n_rl_prompts=200",
         "world.n_eval_prompts=16", "world.n_pref_policy=100", "policy.arch.hidden_size=32",
         "policy.arch.num_layers=1", "policy.arch.num_heads=2", "policy.arch.intermediate_size=64",
         "reward.arch.hidden_size=24", "reward.arch.num_layers=1", "reward.arch.num_heads=2",
         "reward.arch.intermediate_size=48", "sft.batch_size=32", "rm.batch_size=32", "rm.epochs=1",
         "eval.samples_per_prompt=1")

_SMOKE_SEEDS = (0, 1)
SMOKE = BenchDesign(
    name="smoke",
    # Every path at tiny sizes, one world: the pilot, a 2-point oracle grid, each arm kind once (R2M family,
    # a baseline, a ladder rung, an ensemble, the gold ceiling, the KL-targeted regime) on 2 seeds, SER on 2.
    cells=(Cell("length", "RLOO", (Arm.VANILLA,), (100, 101), phase=Phase.PILOT),
           Cell("length", "RLOO", (Arm.VANILLA, Arm.R2M, Arm.ORACLE, Arm.LADDER_25, Arm.ENSEMBLE_UWO),
                _SMOKE_SEEDS),
           Cell("length", "RLOO", (Arm.SCALE_CONTROL,), _SMOKE_SEEDS, secondary=True),
           Cell("length", "RLOO", (Arm.GOLD,), (0,)),
           Cell("length", "RLOO", (Arm.VANILLA, Arm.R2M), _SMOKE_SEEDS, KLRegime.TARGETED)),
    base=(*_TINY, "rl.eval_every=2", "rl.prompts_per_step=4", "rl.k=2"),
    pilot_steps=6,
    sweep=Sweep("length", (1e-4, 1e-3), ("random",), (0.6,)),
    tuning_seeds=(100, 101),
    ser_worlds=("length",),
    ser_seeds=_SMOKE_SEEDS,
    ser_overrides=("ser.max_loops=1", "ser.tau_delta=0.001", "ser.val_size=0"),
    cap_factor=1.0,
    expected_test_steps=6,
)

TUNING_SEEDS = (100, 101, 102)
TEST_SEEDS = tuple(range(10))
_HEADLINE = (Arm.VANILLA, Arm.R2M, Arm.ORACLE, Arm.LADDER_10, Arm.LADDER_25, Arm.LADDER_50)

PAPER = BenchDesign(
    name="paper",
    cells=(*(Cell(w, "RLOO", (Arm.VANILLA,), TUNING_SEEDS, phase=Phase.PILOT) for w in RL_WORLDS),
           *(Cell(w, "RLOO", _HEADLINE + (ENSEMBLES if w in ("length", "noisy") else ()), TEST_SEEDS)
             for w in RL_WORLDS),
           *(Cell(w, "RLOO", (Arm.GOLD,), (0, 1, 2)) for w in RL_WORLDS),
           Cell("length", "RLOO", (Arm.VANILLA, Arm.R2M, Arm.ORACLE), TEST_SEEDS, KLRegime.TARGETED),
           Cell("length", "RLOO", (Arm.WO_TRAIN, Arm.SCALE_CONTROL, Arm.ITERATIVE_HEAD, Arm.RANDOM), TEST_SEEDS,
                secondary=True)),
    # Evaluation every 10 steps, 4 samples per prompt (the pilot reports whether an evaluation point's noise is
    # under half the seed-to-seed spread at this value: docs/bench/budgets.json).
    base=("rl.eval_every=10", "eval.samples_per_prompt=4"),
    # v1's vanilla RLOO in `length` peaked in gold at steps 50-60 (KL 0.06-0.09) and reached KL 0.32 by step
    # 90: 120 steps see the peak and 4x its KL.
    pilot_steps=120,
    sweep=Sweep("length", (1e-5, 1e-4, 1e-3), ("random", "matched"), (0.6,)),
    tuning_seeds=TUNING_SEEDS,
    ser_worlds=("length", "noisy", "blind", "ser_headroom"),
    ser_seeds=TEST_SEEDS,
    expected_test_steps=100,
)

PRESETS: dict[str, BenchDesign] = {"smoke": SMOKE, "paper": PAPER}


def design_preset(name: str) -> BenchDesign:
    if name not in PRESETS:
        raise ValueError(f"bench preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------------- claims in


class ClaimCell(NamedTuple):
    """A claim decided in one (world, algorithm)."""

    world: str
    algorithm: str
    spec: ClaimSpec


def claims_in(design: BenchDesign) -> list[ClaimCell]:
    """(world, algorithm, claim) triples the design's test cells can decide (both arms in the world's cells of
    the claim's regime; SER claims in the SER worlds, algorithm ``SER``), primaries first."""
    arms: dict[tuple[str, str, KLRegime], set[Arm]] = {}
    for c in design.cells:
        if c.phase is Phase.TEST:
            arms.setdefault((c.world, c.algorithm, c.regime), set()).update(c.arms)
    out = []
    for spec in sorted(CLAIMS, key=lambda s: not s.primary):
        if spec.a.arm is Arm.SER:
            out += [ClaimCell(w, "SER", spec) for w in design.ser_worlds]
            continue
        out += [ClaimCell(w, algo, spec) for (w, algo, regime), have in arms.items()
                if regime is spec.regime and {spec.a.arm, spec.b.arm} <= have]
    return out
