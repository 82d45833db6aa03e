"""Compatibility module (the README's Public API): re-exports :mod:`r2m.core.kl_control`."""

from r2m.core.kl_control import *  # noqa: F401,F403
