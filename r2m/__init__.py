"""r2m: RLHF whose reward models keep up with the policy (R2M, SER, RLOO/GRPO/ReMax/REINFORCE++/PPO).

The public objects are exported lazily (PEP 562): ``import r2m`` imports neither torch nor transformers, so that
``r2m.__version__`` and the CLI's ``--help`` stay fast; ``r2m.RLTrainer`` imports the training stack on first use.

    r2m.RLTrainer, r2m.RMTrainer, r2m.SERTrainer     the object API (r2m.api.trainers; README "From Python")
    r2m.RLArguments, r2m.RMArguments, r2m.SERArguments   r2m's flat, TRL-named arguments (r2m.api.args); the
                                                     trainers also take trl.GRPOConfig, RLOOConfig, RewardConfig
    r2m.TrainerCallback                              on_step_end / on_evaluate / on_save; return True to stop
                                                     (transformers' TrainerCallbacks work too)
    r2m.FeedbackRewardModel                          the R2M reward model (r2m.models.r2m)

The config file's sections are ``r2m.config.training.RLConfig``, ``RMConfig``, ``SERConfig``, ...
"""

from __future__ import annotations

import importlib


def _version() -> str:
    """The installed distribution's version, else (a source checkout on PYTHONPATH) pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("r2m")
    except metadata.PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        text = pyproject.read_text() if pyproject.is_file() else ""
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
        return found.group(1) if found else "0+unknown"


__version__ = _version()

_EXPORTS = {
    "RLTrainer": "r2m.api.trainers", "RMTrainer": "r2m.api.trainers", "SERTrainer": "r2m.api.trainers",
    "TrainerCallback": "r2m.api.callbacks",
    "RLArguments": "r2m.api.args", "RMArguments": "r2m.api.args", "SERArguments": "r2m.api.args",
    "FeedbackRewardModel": "r2m.models.r2m",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'r2m' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
