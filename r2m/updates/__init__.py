"""Optimisation: the policy update, R2M's update, the supervised loop, RM and SFT training."""
