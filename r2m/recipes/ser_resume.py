"""SER's loop state (``<run>/ser_state.json``, :data:`SER_STATE_FORMAT`) and its resume past a damaged RM: the loop
state points at each loop's RM directory; where the newest one (or the Full baseline's) no longer verifies against
its manifest, the loop before it is resumed instead. A state of another format version is refused by name."""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from r2m.reports.ser_report import STATE_FILE
from r2m.runtime.checkpoint import verify
from r2m.runtime.safeio import read_json
from r2m.fileio import FORMAT_KEY, ArtifactFormat, atomic_write_text

log = logging.getLogger("r2m")

SER_STATE_FORMAT = ArtifactFormat("SER loop state", 1, "resume it with the r2m release that wrote it, or start a new "
                                  "run (another run.name, or run.resume=never)")
"""ser_state.json's ``format_version``: its layout (the typed stop, Full and PPO fields) and its key's parts."""


def before_damaged_rm(state: LoopState, run_dir: Path) -> Optional[LoopState]:
    """``state``, or where its newest loop's RM (or the Full baseline's) is damaged, the state before that loop
    (None before Loop 0): the loops are a function of the seed, so they are computed again, identically."""
    if state.full is not None and (problem := verify(run_dir / state.full.rm_dir)) is not None:
        log.warning("SER: the Full baseline's RM %s is damaged (%s); training it again", state.full.rm_dir, problem)
        state.full, state.ppo = None, None
    while (problem := verify(run_dir / state.rm_dir)) is not None:
        log.warning("SER: loop %d's RM %s is damaged (%s); resuming before that loop", state.loop, state.rm_dir,
                    problem)
        if state.loop == 0:
            return None
        state.loop, state.stop, state.ppo = state.loop - 1, None, None
        state.history = state.history[: state.loop + 1]
        state.rm_dir = str(Path(state.rm_dir).parents[2] / f"loop-{state.loop}" / "checkpoints" / "final")
    return state


class StopReason(str, enum.Enum):
    """Why the self-training loop ended."""

    STATUS = "stop_status"
    """The learning status on D_val was STOP (Eq. 3)."""
    EMPTY = "empty_filter"
    """The filter kept no pair."""
    MAX_LOOPS = "max_loops"
    """ser.max_loops loops ran."""
    CALLBACK = "callback"
    """A callback of the object API (``r2m.SERTrainer(callbacks=...)``) returned True after a loop."""


@dataclass(frozen=True)
class StopEvidence:
    """What the decision that ended the loop was made on (the validation set D_val, Eq. 2-3)."""

    val_confident: float
    """Validation pairs with p_chosen > tau_high and p_rejected < tau_low."""
    val_delta_p: float
    """Mean |p1 - p2| on D_val (Eq. 2)."""
    val_n: float
    """Validation pairs."""
    status1_gain: float
    """Validation-accuracy gain of the last Status-1 loop (NaN with none)."""
    cal_centre: float
    """Score calibration: the centre."""
    cal_scale: float
    """Score calibration: the temperature."""


@dataclass(frozen=True)
class LoopStop:
    """How the loop ended. In ser_state.json: {"reason", "loop"} and, after a decision, "decision" and the evidence
    as ``ser/<field>``."""

    reason: StopReason
    loop: int
    """The loop at which it ended (the one not run, after a decision; the last completed one on max_loops)."""
    decision: Optional[str] = None
    """The decision's reason as text; None on max_loops."""
    evidence: Optional[StopEvidence] = None
    """None on max_loops."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason.value, "loop": self.loop}
        if self.decision is not None:
            ev = self.evidence
            out.update(decision=self.decision, **{f"ser/{f.name}": getattr(ev, f.name) for f in fields(ev)})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LoopStop":
        ev = None
        if d.get("decision") is not None:
            ev = StopEvidence(**{f.name: d[f"ser/{f.name}"] for f in fields(StopEvidence)})
        return cls(StopReason(d["reason"]), d["loop"], d.get("decision"), ev)


@dataclass(frozen=True)
class FullBaseline:
    """The Full baseline: an RM trained on every labelled pair of the RM part. In ser_state.json: "rm_dir" and the
    metrics as ``ser/<field>``."""

    rm_dir: str
    """Its RM, relative to the run directory."""
    selected: int
    """Pairs it trained on."""
    val_acc: float
    val_gold_acc: float
    test_acc: float
    test_gold_acc: float
    train_steps: int
    wall_s: float
    test_acc_equal_len: float
    """Test accuracy on the pairs of equal answer length (NaN: no such pair)."""
    test_acc_unequal_len: float
    """Test accuracy on the pairs of unequal answer length (NaN: no such pair)."""

    def to_json(self) -> dict[str, Any]:
        return {"rm_dir": self.rm_dir, **{f"ser/{f.name}": getattr(self, f.name) for f in fields(self)[1:]}}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FullBaseline":
        return cls(d["rm_dir"], **{f.name: d[f"ser/{f.name}"] for f in fields(cls)[1:]})


@dataclass(frozen=True)
class PPOSummary:
    """The PPO stage, once run. In ser_state.json: these fields flat, ``final`` spread between sft_gold and
    sft_length."""

    run_dir: str
    rm_dir: str
    """The kept RM it trained against, relative to the SER run directory (a different one reruns PPO)."""
    steps: int
    sft_gold: float
    """Gold reward of the SFT policy (step 0's evaluation)."""
    final: dict[str, float] = field(default_factory=dict)
    """The final evaluation's ``eval/*`` metrics, those the run reported: a dict, because which keys exist depends
    on the run (a world run has gold and win rates, a user-model run may not)."""
    sft_length: float = float("nan")
    wall_s: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "rm_dir": self.rm_dir, "steps": self.steps, "sft_gold": self.sft_gold,
                **self.final, "sft_length": self.sft_length, "wall_s": self.wall_s}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PPOSummary":
        final = {k: v for k, v in d.items() if k.startswith("eval/")}
        return cls(d["run_dir"], d["rm_dir"], d["steps"], d["sft_gold"], final, d["sft_length"], d["wall_s"])


_TYPED = {"stop": LoopStop, "full": FullBaseline, "ppo": PPOSummary}
"""LoopState's typed fields: each saved with ``to_json`` and read back with ``from_json``."""


@dataclass
class LoopState:
    """Everything needed to continue after the last completed loop (``<run>/ser_state.json``)."""

    key: str
    """Hash of the config parts that shape the loop: a state of another config is refused."""
    loop: int
    """Last completed loop (0: the seed RM)."""
    rm_dir: str
    """The current RM, relative to the run directory."""
    seed_dir: str
    """The Loop-0 RM, relative to the run directory."""
    history: list
    """One dict per completed loop (the metrics row, plus the status and the decision's reason as text). These stay
    dicts: their keys depend on the loop (Loop 0 has no pseudo-label metrics) and feed metrics.jsonl as they are."""
    stop: Optional[LoopStop] = None
    """How the loop ended; None while it may go on."""
    full: Optional[FullBaseline] = None
    """The Full baseline, once trained."""
    ppo: Optional[PPOSummary] = None
    """PPO stage summary, once run."""

    def to_json(self) -> dict[str, Any]:
        """The ser_state.json layout: the format version, then the fields (the typed ones as their ``to_json``)."""
        out = {**SER_STATE_FORMAT.stamp(), **vars(self)}
        for name in _TYPED:
            out[name] = None if out[name] is None else out[name].to_json()
        return out

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / STATE_FILE, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str | Path = STATE_FILE) -> "LoopState":
        """The state of ``d`` (read from ``where``), refused unless it has :data:`SER_STATE_FORMAT`'s version."""
        SER_STATE_FORMAT.check(d.get(FORMAT_KEY), where)
        typed = {name: None if d.get(name) is None else kind.from_json(d[name]) for name, kind in _TYPED.items()}
        return cls(**{**{k: v for k, v in d.items() if k != FORMAT_KEY}, **typed})

    @classmethod
    def load(cls, run_dir: Path) -> Optional["LoopState"]:
        path = run_dir / STATE_FILE
        return cls.from_json(read_json(path), path) if path.exists() else None
