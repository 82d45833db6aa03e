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


def test_accuracy_split_by_equal_and_unequal_length() -> None:
    # Pairs 0 and 2 have answers of the same length in words, pairs 1 and 3 do not.
    rows = [{"chosen": "a b", "rejected": "c d"}, {"chosen": "a b c", "rejected": "d"},
            {"chosen": "x", "rejected": "y"}, {"chosen": "p", "rejected": "q r"}]
    chosen, rejected = torch.tensor([0.7, 0.3, 0.2, 0.6]), torch.tensor([0.3, 0.3, 0.9, 0.1])
    acc = accuracy_from_scores(chosen, rejected, rows)  # wins: 1, 0.5 (tie), 0, 1
    assert acc.n_equal_length == 2
    assert math.isclose(acc.equal_length_accuracy, (1 + 0) / 2, rel_tol=1e-6)
    assert math.isclose(acc.unequal_length_accuracy, (0.5 + 1) / 2, rel_tol=1e-6)
    assert math.isclose(acc.accuracy, (1 + 0.5 + 0 + 1) / 4, rel_tol=1e-6)
    # All pairs of unequal length: the equal-length accuracy is undefined, not 0.
    only = accuracy_from_scores(chosen[[1, 3]], rejected[[1, 3]], [rows[1], rows[3]])
    assert math.isnan(only.equal_length_accuracy) and only.n_equal_length == 0
    # Rows without the answer texts: no split.
    bare = accuracy_from_scores(chosen, rejected, [{}] * 4)
    assert math.isnan(bare.equal_length_accuracy) and math.isnan(bare.unequal_length_accuracy)
