"""Evaluation: reward-model accuracy, policy evaluation on a fixed prompt set, win rates, gold
at a KL budget along a run (``trajectory``)."""
