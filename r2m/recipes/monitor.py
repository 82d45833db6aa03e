"""``r2m monitor RUN_DIR``: replay the alarm on a finished run's logged signals (issue 19, item 3).

The run's evaluation rows (metrics.jsonl, those with monitor/* values) are the history
:func:`r2m.core.monitor.first_alarm` reads; the thresholds are the run's ``rl.monitor`` (its config.yaml),
changed by overrides on the command line (``token_js=0.05`` or ``rl.monitor.token_js=0.05``; ``null`` turns
a signal off). It prints the signals tripped at each evaluation and when the alarm would have fired and why;
where gold is known, the gold of the checkpoint it keeps as a share of the SFT -> peak gold gain. The plot
(RUN_DIR/plots/monitor.png) puts the signals under the gold and proxy curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from r2m.config.parsing import load_config
from r2m.config.monitor import ALARM_RULE, THRESHOLDS, MonitorConfig
from r2m.core.monitor import Alarm, Reason, Signal, first_alarm, tripped_signals
from r2m.errors import ConfigError, DataError
from r2m.recipes.alarm import EVAL_MARK, describe
from r2m.reports.monitor_plot import plot_monitor
from r2m.runtime.runlog import peak, read_metrics

PREFIX = "rl.monitor."


@dataclass(frozen=True)
class Replay:
    """What ``r2m monitor`` found."""

    rows: list[dict]
    """The run's evaluation rows."""
    config: MonitorConfig
    alarm: Alarm
    trips: list[tuple[Reason, ...]]
    """Per evaluation, the signals that tripped."""
    peak_gold_step: Optional[int]
    recovered: Optional[float]
    """(gold at the kept checkpoint - SFT gold) / (peak gold - SFT gold), where gold is known and an alarm fired."""
    text: str
    plot: Optional[Path]

    @property
    def alarm_step(self) -> Optional[int]:
        return None if self.alarm.index is None else int(self.rows[self.alarm.index]["step"])


def _overrides(items: Sequence[str]) -> list[str]:
    """``key=value`` of the alarm's fields as ``rl.monitor.key=value``; anything else is refused."""
    allowed = set(THRESHOLDS + ALARM_RULE)
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        name = key.strip()[len(PREFIX):] if key.strip().startswith(PREFIX) else key.strip()
        if not sep or name not in allowed:
            raise ConfigError(f"r2m monitor: override {item!r}: expected name=value with name one of "
                              f"{sorted(allowed)} (optionally prefixed {PREFIX})")
        out.append(f"{PREFIX}{name}={value}")
    return out


def _eval_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise DataError(f"{path}: no such file; expected the run directory of an `r2m rl` run")
    rows = [r for r in read_metrics(path) if EVAL_MARK in r]
    if not any(k.startswith("monitor/") for r in rows for k in r):
        raise DataError(f"{path}: no evaluation row has monitor/* values; expected a run with rl.monitor.enabled "
                        "(the default)")
    return rows


def _recovered(rows: list[dict], alarm: Alarm) -> Optional[float]:
    if alarm.index is None or alarm.onset == 0 or not all("eval/gold" in r for r in rows):
        return None
    sft, best = rows[0]["eval/gold"], max(r["eval/gold"] for r in rows)
    kept = rows[alarm.onset - 1]["eval/gold"]
    return (kept - sft) / (best - sft) if best > sft else None


def _report(rows: list[dict], alarm: Alarm, trips: list[tuple[Reason, ...]], peak_step: Optional[int],
            recovered: Optional[float]) -> str:
    steps = [int(r["step"]) for r in rows]
    lines = [f"{len(rows)} evaluations; signals logged: "
             + ", ".join(s.value for s in Signal if any(s.value in r for r in rows))]
    for step, row, reasons in zip(steps, rows, trips):
        gold = f" gold={row['eval/gold']:.4f}" if "eval/gold" in row else ""
        tripped = ", ".join(r.signal.value.split("/")[-1] for r in reasons) or "-"
        lines.append(f"  step {step:>6}: proxy={row.get('eval/proxy', float('nan')):.4f}{gold}  tripped: {tripped}")
    lines.append(describe(alarm, steps))
    if peak_step is not None:
        lines.append(f"peak gold at step {peak_step}")
    if recovered is not None:
        lines.append(f"the kept checkpoint recovers {100 * recovered:.1f}% of the SFT -> peak gold gain")
    return "\n".join(lines)


def replay(run_dir: str | Path, overrides: Sequence[str] = (), plot: bool = True) -> Replay:
    """Replay the alarm on ``run_dir``'s logged signals with its ``rl.monitor`` changed by ``overrides``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise DataError(f"{cfg_path}: no such file; expected the run directory of an `r2m rl` run")
    config = load_config(cfg_path, _overrides(overrides)).rl.monitor
    rows = _eval_rows(run_dir)
    alarm, trips = first_alarm(rows, config), tripped_signals(rows, config)
    peak_step = peak(rows, "eval/gold").step if all("eval/gold" in r for r in rows) else None
    recovered = _recovered(rows, alarm)
    path = plot_monitor(rows, alarm, trips, config, run_dir / "plots" / "monitor.png", peak_step) if plot else None
    return Replay(rows, config, alarm, trips, peak_step, recovered, _report(rows, alarm, trips, peak_step, recovered),
                  path)


def cmd_monitor(run_dir: str, overrides: Sequence[str], plot: bool = True) -> int:
    """The ``r2m monitor`` subcommand: print the replay (and where the plot went)."""
    result = replay(run_dir, overrides, plot)
    print(result.text)
    if result.plot is not None:
        print(f"plot: {result.plot}")
    return 0
