"""Compatibility module (the README's Public API): re-exports :mod:`r2m.recipes.ser` (``run_ser``) and
:mod:`r2m.algorithms.ser_rules` (``learning_status``)."""

from r2m.algorithms.ser_rules import *  # noqa: F401,F403
from r2m.recipes.ser import *  # noqa: F401,F403
