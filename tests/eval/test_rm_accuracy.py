"""r2m.eval.rm_accuracy: pairwise wins (ties half) and the accuracy against labels and against gold."""

from __future__ import annotations

import math

import torch

from r2m.eval.rm_accuracy import accuracy_from_scores, pairwise_wins


def test_pairwise_wins() -> None:
    assert pairwise_wins(torch.tensor([0.7, 0.2, 0.5]), torch.tensor([0.3, 0.2, 0.9])).tolist() == [1.0, 0.5, 0.0]


def test_accuracy_against_labels_and_gold() -> None:
    chosen, rejected = torch.tensor([0.7, 0.2, 0.5, 0.1]), torch.tensor([0.3, 0.2, 0.9, 0.4])
    rows = [{"gold_chosen": 0.9, "gold_rejected": 0.1},  # gold agrees with the label; RM right
            {"gold_chosen": 0.5, "gold_rejected": 0.5},  # gold tie: left out of gold accuracy
            {"gold_chosen": 0.2, "gold_rejected": 0.8},  # gold disagrees with the label; RM sides with gold
            {"gold_chosen": 0.6, "gold_rejected": 0.3}]  # RM wrong either way
    acc = accuracy_from_scores(chosen, rejected, rows)
    assert math.isclose(acc.accuracy, (1 + 0.5 + 0 + 0) / 4, rel_tol=1e-6)
    assert math.isclose(acc.gold_accuracy, (1 + 1 + 0) / 3, rel_tol=1e-6) and acc.n == 4
    assert math.isnan(accuracy_from_scores(chosen, rejected, [{}] * 4).gold_accuracy)
