"""The r2m benchmark: matched-KL comparisons in the gold-reward worlds, their statistics and their reports."""
