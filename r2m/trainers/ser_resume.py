"""SER's resume past a damaged RM: the loop state points at each loop's RM directory; where the newest one
(or the Full baseline's) no longer verifies against its manifest, the loop before it is resumed instead."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from r2m.checkpoint import verify

if TYPE_CHECKING:
    from r2m.trainers.ser import LoopState

log = logging.getLogger("r2m")


def before_damaged_rm(state: "LoopState", run_dir: Path) -> Optional["LoopState"]:
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
