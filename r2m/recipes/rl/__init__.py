"""The RL run (policy-gradient training for every algorithm, R2M included)."""
