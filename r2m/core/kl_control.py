"""KL-coefficient controllers: the β that weighs the KL to the reference policy.

A fixed β, or the adaptive proportional controller of Ziegler et al. (2019), "Fine-Tuning Language
Models from Human Preferences", as TRL and OpenRLHF implement it: β is nudged up when the measured
KL overshoots a target and down when it undershoots, so the policy drifts from the reference at a
chosen pace whatever the reward scale.

Both controllers expose ``value`` (the current β), ``update(current_kl, n_steps)`` (call once per
rollout batch with the batch's mean sequence KL) and ``state_dict`` / ``load_state_dict`` so a
resumed run continues from the adapted β instead of restarting from the initial one.
"""

from __future__ import annotations

import math
from typing import Any, Union

__all__ = [
    "FixedKLController",
    "AdaptiveKLController",
    "KLController",
    "make_kl_controller",
]


def _check_state(state: dict[str, Any], kind: str) -> float:
    """The β stored in ``state``, after checking it was written by a controller of ``kind``."""
    if state.get("kind") != kind:
        raise ValueError(f"KL controller state is for a {state.get('kind')!r} controller, expected {kind!r}")
    value = float(state["value"])
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"KL controller state: value must be finite and >= 0, got {value!r}")
    return value


class FixedKLController:
    """A constant KL coefficient β; ``update`` is a no-op."""

    def __init__(self, kl_coef: float) -> None:
        if not (math.isfinite(kl_coef) and kl_coef >= 0.0):
            raise ValueError(f"kl_coef must be finite and >= 0, got {kl_coef!r}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt: β stays what it was set to."""

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _check_state(state, "fixed")

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value!r})"


class AdaptiveKLController:
    """Adaptive β (Ziegler et al. 2019): a proportional controller towards a target KL.

    On every update with the measured KL ``current_kl`` over ``n_steps`` samples::

        e = clip(current_kl / target − 1, −0.2, 0.2)
        β ← max(0, β · (1 + e · n_steps / horizon))

    so β grows when the KL exceeds ``target`` and shrinks when it falls short. The clip bounds the
    change per update (a single outlier batch cannot blow β up), and ``horizon`` sets how many
    samples it takes to correct a given error: TRL/OpenRLHF pass ``n_steps`` = samples in the
    rollout batch and use ``horizon`` = 10000.

    SER's PPO runs use ``init_kl_coef`` = 0.2 and ``target`` = 0.1.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if not (math.isfinite(init_kl_coef) and init_kl_coef >= 0.0):
            raise ValueError(f"init_kl_coef must be finite and >= 0, got {init_kl_coef!r}")
        if not (math.isfinite(target) and target > 0.0):
            raise ValueError(f"target must be finite and > 0, got {target!r}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon!r}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            # A NaN/inf KL (a diverged batch) would poison β for the rest of the run; refuse it.
            raise ValueError(f"current_kl must be finite, got {current_kl!r}")
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        # n_steps > 5 * horizon makes mult negative below the target: beta stops at 0, never below.
        self.value = max(0.0, self.value * mult)

    def state_dict(self) -> dict[str, Any]:
        # target and horizon are settings, taken from the (resumed) run's config, not from here;
        # they are saved only so a checkpoint is readable on its own.
        return {"kind": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = _check_state(state, "adaptive")

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value!r}, target={self.target!r}, horizon={self.horizon!r})"


KLController = Union[FixedKLController, AdaptiveKLController]


def make_kl_controller(beta: float, adaptive: bool, target: float, horizon: int) -> KLController:
    """An :class:`AdaptiveKLController` starting at ``beta`` if ``adaptive``, else a fixed β.

    ``target`` and ``horizon`` are ignored (and not validated) when ``adaptive`` is false.
    """
    if adaptive:
        return AdaptiveKLController(beta, target, horizon)
    return FixedKLController(beta)
