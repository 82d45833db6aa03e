"""SER's loop state (``<run>/ser_state.json``) and its resume past a damaged RM: the loop state points at each
loop's RM directory; where the newest one
(or the Full baseline's) no longer verifies against its manifest, the loop before it is resumed instead."""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from r2m.reports.ser_report import STATE_FILE
from r2m.runtime.checkpoint import verify
from r2m.runtime.safeio import read_json
from r2m.fileio import atomic_write_text

log = logging.getLogger("r2m")


def before_damaged_rm(state: LoopState, run_dir: Path) -> Optional[LoopState]:
    """``state``, or where its newest loop's RM (or the Full baseline's) is damaged, the state before that loop
    (None before Loop 0): the loops are a function of the seed, so they are computed again, identically."""
    if state.full is not None and (problem := verify(run_dir / state.full["rm_dir"])) is not None:
        log.warning("SER: the Full baseline's RM %s is damaged (%s); training it again", state.full["rm_dir"], problem)
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
    """One dict per completed loop (the metrics row, plus the status and the decision's reason as text)."""
    stop: Optional[dict] = None
    """How the loop ended: {"reason", "loop", "decision", the evidence}; None while it may go on."""
    full: Optional[dict] = None
    """The Full baseline: {"rm_dir", metrics...}, once trained."""
    ppo: Optional[dict] = None
    """PPO stage summary, once run."""

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / STATE_FILE, json.dumps(vars(self), indent=1) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> Optional["LoopState"]:
        path = run_dir / STATE_FILE
        return cls(**read_json(path)) if path.exists() else None
