"""Whole jobs: the RL run, the SER run, world caching, bench, demo, evaluation commands."""
