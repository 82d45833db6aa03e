"""Compatibility module (the README's Public API): re-exports :mod:`r2m.core.losses`."""

from r2m.core.losses import *  # noqa: F401,F403
