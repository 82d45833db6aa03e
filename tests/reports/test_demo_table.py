"""The demo's table over seeds (r2m.reports.demo_table): spreads by hand, gold at the KL budget, the rows."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from r2m.reports.demo_table import COLUMNS, demo_table, gold_at_budget, spread


def test_spread_by_hand() -> None:
    s = spread([0.7, 0.9, 0.8])
    assert s.mean == pytest.approx(0.8) and s.sd == pytest.approx(0.1)  # sqrt(((-.1)^2 + .1^2 + 0) / 2)
    assert (s.lo, s.hi, s.n, s.of) == (0.7, 0.9, 3, 3)
    assert s.cell() == "0.800 ± 0.100"
    one = spread([0.25])
    assert one.cell() == "0.250" and math.isnan(one.sd)
    part = spread([0.3, float("nan"), 0.5])  # a budget one seed never reached: left out, and counted
    assert part.n == 2 and part.of == 3 and part.cell() == "0.400 ± 0.141 (2/3)"
    assert spread([float("nan")]).cell() == "-"


def _run(seed: int, kls: list[float], golds: list[float]) -> SimpleNamespace:
    steps = [10 * i for i in range(len(kls))]
    history = [{"step": s, "eval/kl": k, "eval/gold": g, "eval/length": 5.0 + s / 100, "eval/exact_match": 0.3,
                "eval/proxy": 0.1 * s} for s, k, g in zip(steps, kls, golds)]
    history += [{"step": s, "time/step": 0.4 + 0.1 * seed} for s in steps[1:]]
    final = dict(history[len(kls) - 1], **{"eval/win_rate_vs_sft": 0.6})
    return SimpleNamespace(history=history, final_eval=final, rm_accuracy={})


def test_gold_at_budget_interpolates_and_says_not_reached() -> None:
    run = _run(0, [0.0, 0.05, 0.15], [0.7, 0.8, 0.6])
    assert gold_at_budget(run, 0.1) == pytest.approx(0.7)  # halfway from (0.05, 0.8) to (0.15, 0.6)
    assert math.isnan(gold_at_budget(run, 0.2))


def test_demo_table_rows_are_mean_and_sd_over_seeds() -> None:
    runs = [_run(0, [0.0, 0.05, 0.15], [0.7, 0.8, 0.6]), _run(1, [0.0, 0.05, 0.25], [0.7, 0.9, 0.4])]
    table = demo_table({"rloo": runs}, 0.1)
    assert table.headers == ["policy", "gold", "gold@KL0.1", *COLUMNS[2:]]
    sft, rloo = table.rows
    assert sft[0] == "SFT" and sft[1] == "0.700" and rloo[0] == "RLOO (frozen proxy RM)"
    # final gold 0.6 and 0.4: mean 0.5, sd 0.1414; gold at KL 0.1: 0.7 and 0.9 - 0.5 * 0.25 = 0.775.
    assert rloo[1] == "0.500 ± 0.141"
    assert table.per_seed["rloo"]["gold@KL"] == pytest.approx([0.7, 0.775])
    assert table.spreads["rloo"]["peak gold"].mean == pytest.approx(0.85)
    assert table.per_seed["rloo"]["s/step"] == pytest.approx([0.4, 0.5])
