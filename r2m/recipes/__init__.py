"""Whole jobs: the RL run, the SER run, world caching, demo, evaluation commands."""
