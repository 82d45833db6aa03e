"""``docs/bench/trajectories.json``: every finished run of a bench, compact, committed; the report and its JSON
files regenerate from it without running anything.

One :class:`RunRecord` per run: where it sits in the design (phase, world, algorithm, arm, seed, regime), the
commit that made it, why it stopped, its evaluation trajectory as parallel lists (step, kl, gold, proxy) and the
scalars the claims read (``rm_acc/*``, ``r2m/weight_change``, ``r2m/fusion_weight_change``, ``ser/*``,
``ser/loops``). The document's header holds what the earlier phases decided (the budgets, caps and the carried
setting) and the design's name.
"""

from __future__ import annotations

import collections
import json
import statistics
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

from r2m.errors import DataError
from r2m.eval.trajectory import Trajectory, trajectory
from r2m.fileio import atomic_write_text
from r2m_bench.design import Arm, KLRegime, Phase, Plan, RunSpec, SweepPoint

FORMAT = "r2m-bench-trajectories/1"


class RunRecord(NamedTuple):
    """What the verdicts and the report need of one finished run."""

    name: str
    phase: Phase
    world: str
    algorithm: str
    arm: Arm
    seed: int
    regime: KLRegime
    commit: str
    stop_reason: Optional[str]
    step: tuple[int, ...]
    kl: tuple[float, ...]
    gold: tuple[float, ...]
    proxy: tuple[Optional[float], ...]
    scalars: Mapping[str, float]
    wall_s: Optional[float] = None

    @property
    def trajectory(self) -> Optional[Trajectory]:
        return trajectory(self.step, self.kl, self.gold) if self.step else None

    def to_json(self) -> dict:
        return {"phase": self.phase.value, "world": self.world, "algorithm": self.algorithm, "arm": self.arm.value,
                "seed": self.seed, "regime": self.regime.value, "commit": self.commit,
                "stop_reason": self.stop_reason, "step": list(self.step), "kl": list(self.kl),
                "gold": list(self.gold), "proxy": list(self.proxy), "scalars": dict(self.scalars),
                "wall_s": self.wall_s}


def record_of(spec: RunSpec, saved: Mapping) -> RunRecord:
    """A run's record from its ``bench14.json`` (r2m_bench.runner)."""
    evals = saved.get("evals", [])
    return RunRecord(spec.name, spec.phase, spec.world, spec.algorithm, spec.arm, spec.seed, spec.regime,
                     saved.get("commit", "not recorded"), saved.get("stop_reason"),
                     tuple(int(r["step"]) for r in evals), tuple(float(r["eval/kl"]) for r in evals),
                     tuple(float(r["eval/gold"]) for r in evals), tuple(r.get("eval/proxy") for r in evals),
                     dict(saved.get("scalars", {})), saved.get("wall_s"))


class Trajectories(NamedTuple):
    design: str
    command: str
    plan: Optional[Plan]
    runs: list[RunRecord]


def _plan_json(plan: Optional[Plan]) -> Optional[dict]:
    if plan is None:
        return None
    return {"budgets": {w: list(b) for w, b in plan.budgets.items()}, "caps": dict(plan.caps),
            "setting": None if plan.setting is None else plan.setting._asdict()}


def write_trajectories(path: str | Path, design: str, command: str, plan: Optional[Plan],
                       runs: Sequence[RunRecord]) -> Path:
    """One JSON object; each run on one line (compact, and a diff shows which runs changed)."""
    head = {"format": FORMAT, "design": design, "command": command, "plan": _plan_json(plan)}
    body = ",\n".join(f"  {json.dumps(r.name)}: {json.dumps(r.to_json(), allow_nan=False)}" for r in runs)
    text = json.dumps(head)[:-1] + ',\n"runs": {\n' + body + "\n}}\n"
    atomic_write_text(path, text)
    return Path(path)


def read_trajectories(path: str | Path) -> Trajectories:
    """The document of :func:`write_trajectories`; a wrong format or a malformed run names the file and run."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the bench trajectories: {e}") from e
    if doc.get("format") != FORMAT:
        raise DataError(f"{path}: format {doc.get('format')!r}; expected {FORMAT!r}")
    p = doc.get("plan")
    plan = None if p is None else Plan({w: tuple(b) for w, b in p["budgets"].items()}, dict(p["caps"]),
                                       None if p["setting"] is None else SweepPoint(**p["setting"]))
    runs = []
    for name, r in doc["runs"].items():
        try:
            runs.append(RunRecord(name, Phase(r["phase"]), r["world"], r["algorithm"], Arm(r["arm"]), int(r["seed"]),
                                  KLRegime(r["regime"]), r["commit"], r["stop_reason"], tuple(r["step"]),
                                  tuple(r["kl"]), tuple(r["gold"]), tuple(r["proxy"]), r["scalars"], r.get("wall_s")))
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{path}: run {name!r}: {e!r}; expected the fields of RunRecord") from e
    return Trajectories(doc["design"], doc.get("command", ""), plan, runs)


class EvalNoise(NamedTuple):
    """How noisy one evaluation point's gold is, from the samples it drew."""

    se: float
    """Median over the run's evaluations after step 0 of the sampling standard error of ``eval/gold`` (the mean of
    all N samples, the prompts fixed): sqrt(Σ_p n_p s_p² / N²), s_p² the unbiased variance of prompt p's n_p
    samples (prompts with one sample are left out)."""
    samples_per_prompt: int
    """The most common n_p (prompts whose text repeats in the evaluation set pool their samples)."""


def eval_noise(run_dir: str | Path) -> Optional[EvalNoise]:
    """``run_dir``'s evaluation noise, from ``samples/step_*.jsonl`` (every evaluation sample with its gold, as
    ``RunLog.log_samples`` writes them); None without such files or with one sample per prompt."""
    ses, sizes = [], collections.Counter()
    for path in sorted(Path(run_dir).glob("samples/step_*.jsonl")):
        by_prompt: dict[str, list[float]] = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("step", 0) and row.get("gold") is not None:
                by_prompt.setdefault(row["prompt"], []).append(float(row["gold"]))
        groups = [g for g in by_prompt.values() if len(g) > 1]
        if not groups:
            continue
        sizes.update(len(g) for g in groups)
        n = sum(len(g) for g in groups)
        ses.append((sum(len(g) * statistics.variance(g) for g in groups) / n ** 2) ** 0.5)
    if not ses:
        return None
    return EvalNoise(statistics.median(ses), sizes.most_common(1)[0][0])
