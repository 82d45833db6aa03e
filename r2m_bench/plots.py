"""The gold-vs-KL frontier per world: each method's mean curve over seeds, with a band.

For each world, one panel; for each method (a label such as ``RLOO r2m``) its runs' trajectories are read at a
grid of KL budgets by :func:`r2m_bench.frontier.frontier_band`: the mean gold over the runs that reach each
budget, and the band from the lowest to the highest of them. A budget fewer than ``min_runs`` runs reach is
left out of the curve (the line stops where the seeds stop), so a mean of one surviving seed is never drawn
as if it were the method's. Formatting only: no training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from r2m.eval.trajectory import Trajectory
from r2m.fileio import atomic_savefig
from r2m_bench.frontier import BandPoint, frontier_band


def kl_grid(trajs: Sequence[Trajectory], points: int = 25) -> list[float]:
    """``points`` budgets evenly spaced from 0 to the largest KL any run reaches."""
    top = max((max(t.kls) for t in trajs), default=0.0)
    if points < 2 or top <= 0:
        return [0.0]
    return [top * i / (points - 1) for i in range(points)]


def method_band(trajs: Sequence[Trajectory], budgets: Sequence[float], min_runs: int) -> list[BandPoint]:
    """The band points that at least ``min_runs`` runs reach (see the module docstring)."""
    need = min(min_runs, len(trajs))
    return [p for p in frontier_band(trajs, budgets) if p.n >= max(need, 1)]


def plot_frontiers(curves: Mapping[str, Mapping[str, Sequence[Trajectory]]], out_dir: str | Path, *,
                   prefix: str = "frontier", points: int = 25, min_runs: int = 2,
                   budgets: Optional[Sequence[float]] = None) -> list[Path]:
    """One PNG per world, ``<out_dir>/<prefix>_<world>.png``: gold against KL, each method's mean over seeds
    with its min-max band; ``budgets`` (the matched-KL budgets) are drawn as dotted vertical lines.

    ``curves``: world -> method label -> the trajectories of its seeds. Returns the paths written."""
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    out, paths = Path(out_dir), []
    out.mkdir(parents=True, exist_ok=True)
    for world, methods in curves.items():
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=90)
        grid = kl_grid([t for ts in methods.values() for t in ts], points)
        colours = plt.get_cmap("tab20")  # up to 20 distinct methods per world (the default cycle has 10)
        for i, (label, trajs) in enumerate(methods.items()):
            band = method_band(trajs, grid, min_runs)
            if not band:
                continue
            xs, colour = [p.budget for p in band], colours(i % 20)
            ax.plot(xs, [p.mean for p in band], marker=".", color=colour, label=f"{label} (n={len(trajs)})")
            ax.fill_between(xs, [p.lo for p in band], [p.hi for p in band], color=colour, alpha=0.15)
        for b in budgets or ():
            ax.axvline(b, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{world}: gold reward vs KL (mean over seeds, band: min-max)", fontsize=10)
        ax.set_xlabel("KL to the SFT policy")
        ax.set_ylabel("gold reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(atomic_savefig(fig, out / f"{prefix}_{world}.png"))
        plt.close(fig)
    return paths
