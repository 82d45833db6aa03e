"""Experience making: generation backends, rollouts, reward functions and their factory."""
