"""Compatibility module (the README's Public API): re-exports :mod:`r2m.core.reward_shaping`."""

from r2m.core.reward_shaping import *  # noqa: F401,F403
