"""Compatibility module (the README's Public API): re-exports :mod:`r2m.experience.rollout`."""

from r2m.experience.rollout import *  # noqa: F401,F403
