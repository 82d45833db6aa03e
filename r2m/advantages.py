"""Compatibility module (the README's Public API): re-exports :mod:`r2m.core.advantages`."""

from r2m.core.advantages import *  # noqa: F401,F403
