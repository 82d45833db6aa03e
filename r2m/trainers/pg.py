"""Compatibility module (the README's Public API): re-exports :mod:`r2m.recipes.rl.run` (``run_rl``)."""

from r2m.recipes.rl.run import *  # noqa: F401,F403
