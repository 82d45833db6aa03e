"""Process and run infrastructure: distributed, profiling, checkpoints, run locks, safe reads, the run directory."""
