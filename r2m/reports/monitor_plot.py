"""The over-optimisation monitor's plot: the signals under the gold and proxy curves (docs/MONITOR.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from r2m.config.monitor import MonitorConfig
from r2m.core.monitor import SIGNAL_RULES, Alarm, Reason, Rule, Signal
from r2m.fileio import atomic_savefig


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def trip_line(signal: Signal, values: Sequence[float], threshold: float) -> list[float]:
    """The value at which ``signal`` trips, for the plot (the baseline is its first finite value)."""
    rule, base = SIGNAL_RULES[signal], values[0]
    if rule is Rule.RISE:
        return [base + threshold]
    if rule is Rule.FALLS_TO:
        return [threshold * base] if base > 0 else []
    if rule is Rule.ABS_ABOVE:
        return [threshold, -threshold]
    return [threshold]


def _mark_alarm(ax, alarm: Alarm, steps: Sequence[int], peak_step: Optional[int]) -> None:
    if alarm.index is not None:
        ax.axvline(steps[alarm.index], color="red", linewidth=1.2, label=f"alarm (step {steps[alarm.index]})")
        if alarm.onset > 0:
            ax.axvline(steps[alarm.onset - 1], color="orange", linestyle=":", linewidth=1.2,
                       label=f"kept checkpoint (step {steps[alarm.onset - 1]})")
    if peak_step is not None:
        ax.axvline(peak_step, color="grey", linestyle="--", linewidth=1, label=f"peak gold (step {peak_step})")


def plot_monitor(rows: Sequence[dict], alarm: Alarm, trips: Sequence[tuple[Reason, ...]], config: MonitorConfig,
                 path: str | Path, peak_step: Optional[int] = None) -> Path:
    """Top panel: eval/gold (where known) and eval/proxy; one panel per logged signal below, with its trip
    line and the evaluations where it tripped marked; the alarm, the kept checkpoint and peak gold as lines."""
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    signals = [s for s in Signal if _series(rows, s.value)[0]]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1 + len(signals), 1, figsize=(7, 2.0 * (1 + len(signals)) + 0.6), dpi=100,
                             sharex=True, squeeze=False)
    top = axes[0][0]
    for key, label in (("eval/gold", "gold (true)"), ("eval/proxy", "proxy (RM)")):
        xs, ys = _series(rows, key)
        if xs:
            top.plot(xs, ys, marker=".", label=label)
    _mark_alarm(top, alarm, steps, peak_step)
    top.set_ylabel("reward")
    top.set_title("Over-optimisation monitor")
    top.legend(fontsize=7)
    for ax, sig in zip((a[0] for a in axes[1:]), signals):
        xs, ys = _series(rows, sig.value)
        ax.plot(xs, ys, marker=".", color="tab:blue")
        t = config.threshold(sig)
        for y in trip_line(sig, ys, t) if t is not None else []:
            ax.axhline(y, color="tab:red", linestyle="--", linewidth=0.8)
        hit = [(steps[i], r.value) for i, rs in enumerate(trips) for r in rs if r.signal is sig]
        if hit:
            ax.scatter([h[0] for h in hit], [h[1] for h in hit], marker="x", color="tab:red", zorder=3)
        _mark_alarm(ax, alarm, steps, peak_step)
        ax.set_ylabel(sig.value.split("/")[-1], fontsize=7)
    for row in axes:
        row[0].grid(alpha=0.3)
    axes[-1][0].set_xlabel("policy step")
    fig.tight_layout()
    out = atomic_savefig(fig, path)
    plt.close(fig)
    return out
