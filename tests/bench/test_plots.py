"""The gold-vs-KL frontier plot (r2m_bench.plots)."""

from __future__ import annotations

import math

from r2m.eval.trajectory import trajectory
from r2m_bench.plots import kl_grid, method_band, plot_frontiers


def _t(top: float, lift: float):
    return trajectory([0, 10, 20], [0.0, top / 2, top], [0.6, 0.7 + lift, 0.65 + lift])


def test_plot_writes_one_png_per_world(tmp_path) -> None:
    curves = {"length": {"RLOO vanilla": [_t(0.4, 0.0), _t(0.3, 0.01)], "RLOO r2m": [_t(0.5, -0.03), _t(0.45, 0.0)]},
              "blind": {"RLOO vanilla": [_t(0.2, 0.0), _t(0.25, 0.0)]}}
    paths = plot_frontiers(curves, tmp_path / "plots", budgets=(0.1, 0.2))
    assert [p.name for p in paths] == ["frontier_length.png", "frontier_blind.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000


def test_band_stops_where_the_seeds_stop() -> None:
    trajs = [_t(0.4, 0.0), _t(0.2, 0.0)]
    grid = kl_grid(trajs, points=5)  # 0, 0.1, 0.2, 0.3, 0.4
    assert len(grid) == 5 and all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(grid, [0, 0.1, 0.2, 0.3, 0.4]))
    band = method_band(trajs, grid, min_runs=2)
    assert [round(p.budget, 6) for p in band] == [0.0, 0.1, 0.2]  # past 0.2 only one seed remains
    # At KL 0.1: seed A (top 0.4) is half way to its mid point 0.2 -> 0.65; seed B (top 0.2) at its mid -> 0.7.
    mid = band[1]
    assert math.isclose(mid.mean, 0.675) and math.isclose(mid.lo, 0.65) and math.isclose(mid.hi, 0.7)
    assert len(method_band(trajs, grid, min_runs=1)) == 5
