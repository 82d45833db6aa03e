"""Atomic training checkpoints and resume.

A checkpoint is a directory ``checkpoints/step-NNNNNN/`` written to a temporary sibling, fsynced and
renamed (:func:`r2m.utils.atomic_dir`): a directory with that name is complete by construction, and
a crash mid-write leaves only a ``.tmp-*`` directory that is never loaded.

    step-000120/
      policy/            save_pretrained (safetensors) + tokenizer; LoRA adapters save themselves here
      r2m/               R2M's fusion module and head (safetensors), when R2M or a baseline trains
      critic/            PPO's critic, when present
      state.pt           optimisers, schedulers, KL controller, reward moments, RNG states, data position,
                         step -- tensors and plain containers only, loaded with ``weights_only=True``
      meta.json          step, config fingerprint, wall time

The config fingerprint guards resume: a checkpoint of another config is refused with a message
naming the fields that differ.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from r2m.config import to_dict
from r2m.errors import ConfigError

STATE = "state.pt"
META = "meta.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")

# Fields that may change between a run and its resumption without changing what it computes.
RESUME_FREE = {"run.resume", "run.progress", "run.log_with", "run.keep_checkpoints", "run.threads",
               "rl.save_every", "rl.eval_every", "sft.save_every", "sft.log_every", "rm.save_every", "rm.log_every",
               # Recomputing activations gives the same gradients: turn it on to resume on a smaller GPU.
               "policy.gradient_checkpointing", "reward.gradient_checkpointing"}
# The API judge only reads finished samples: its endpoint, model and cache never change a trajectory.
RESUME_FREE_PREFIXES = ("eval.judge.",)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def fingerprint(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """The config fields that determine a training's trajectory (a whole Config, or a part of it)."""
    return {k: v for k, v in _flat(to_dict(cfg), prefix).items()
            if k not in RESUME_FREE and not k.startswith(RESUME_FREE_PREFIXES)}


def check_same_config(saved: dict[str, Any], now: dict[str, Any], where: Path) -> None:
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {now.get(k)!r})" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise ConfigError(f"resume from {where}: the checkpoint was written by another config: {shown}{more}; "
                          "start a new run.name, or resume with the original config")


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, as tensors and plain containers."""
    np_state = np.random.get_state()
    state = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Directories
# ---------------------------------------------------------------------------------------------


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:06d}"


def list_checkpoints(checkpoints: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    if not checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found) if (p / META).exists() and (p / STATE).exists()]


def latest_checkpoint(checkpoints: Path) -> Optional[Path]:
    found = list_checkpoints(checkpoints)
    return found[-1] if found else None


def prune(checkpoints: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0 keeps all); remove stale temporary directories."""
    for p in checkpoints.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep > 0:
        for p in list_checkpoints(checkpoints)[:-keep]:
            shutil.rmtree(p, ignore_errors=True)


def write_state(directory: Path, state: dict[str, Any], step: int, fingerprint: dict[str, Any]) -> None:
    torch.save(state, directory / STATE)
    (directory / META).write_text(json.dumps({"step": step, "config": fingerprint}, indent=1, default=str))


def read_state(directory: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The training state of a checkpoint, refused when it was written under another ``fingerprint``."""
    meta = json.loads((directory / META).read_text())
    # JSON turns tuples into lists: compare through the same round trip.
    check_same_config(meta["config"], json.loads(json.dumps(fingerprint, default=str)), directory)
    # weights_only: tensors and plain containers, never arbitrary pickled objects.
    return torch.load(directory / STATE, weights_only=True, map_location="cpu")
