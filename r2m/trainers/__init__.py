"""Compatibility package (the README's Public API): the RL run is in :mod:`r2m.recipes.rl`, SER in
:mod:`r2m.recipes.ser`."""
