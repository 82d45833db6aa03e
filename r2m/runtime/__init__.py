"""Process and run infrastructure: distributed, host settings, precision, hooks, checkpoints, run locks, safe reads,
the run directory."""
