"""The run directory: resolved config, metrics.jsonl, trackers (via accelerate), plots, samples, checkpoints.

    runs/<name>/
      config.yaml        the resolved config, written once, never mutated
      metrics.jsonl      one JSON object per logged step
      <tracker logs>     run.log_with (transformers' report_to values), through accelerate's trackers
      plots/*.png        matplotlib
      samples/step_NNNNNN.jsonl   each evaluation's prompts, completions and rewards (also a tracker table)
      checkpoints/       save_pretrained / safetensors, written atomically
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence

from r2m.runtime import runlock
from r2m.config.root import Config
from r2m.config.parsing import save_config, to_dict
from r2m.errors import ConfigError, DataError
from r2m.fileio import atomic_savefig, atomic_write_text
from r2m.fileio import decode_lines


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


# run.log_with entry -> the package to install (accelerate's ``is_<name>_available`` says whether it is).
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow",
                    "comet_ml": "comet_ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive",
                    "swanlab": "swanlab"}


def resolve_trackers(names: Sequence[str]) -> list[str]:
    """accelerate's ``log_with`` for ``run.log_with``: ``none`` is no tracker, ``all`` every installed one; a
    tracker named but not installed is an error naming the field and the install (accelerate only warns)."""
    import accelerate.utils

    names = [str(n) for n in names if str(n) != "none"]
    if "all" in names:
        return ["all"]
    missing = [n for n in names if not getattr(accelerate.utils, f"is_{n}_available")()]
    if missing:
        pips = " ".join(TRACKER_PACKAGES[n] for n in missing)
        raise ConfigError(f"run.log_with (report_to): {', '.join(missing)} requested but not installed; "
                          f"pip install {pips}, or leave it out of run.log_with")
    return names


class RunDir:
    """One run's output directory and its loggers."""

    def __init__(self, cfg: Config, accelerator: Optional[Any] = None, name: Optional[str] = None,
                 resume_step: Optional[int] = None):
        self.cfg = cfg
        self.path = Path(cfg.run.root) / (name or cfg.run.name)
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self.accelerator = accelerator
        self._is_main = accelerator is None or accelerator.is_main_process
        self._locked = self._is_main and runlock.is_rank_zero()
        if self._locked:
            # One process per run directory, from before its first byte until close() (or the process's end).
            runlock.acquire(self.path)
        if self._is_main:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self.plots.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.path / "config.yaml")
        self.metrics_path = self.path / "metrics.jsonl"
        self.history: list[dict] = []
        if resume_step is not None and self.metrics_path.exists():
            # Rows past the checkpoint were written by the interrupted run; they are recomputed.
            self.history = [r for r in read_metrics(self.metrics_path) if r["step"] <= resume_step]
        if self._is_main:
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.history))
        # make_accelerator resolved and checked run.log_with; an accelerator made without trackers logs to none.
        self._trackers = accelerator is not None and bool(getattr(accelerator, "log_with", None))
        if self._trackers:
            # Named after the run (issue 17): wandb's project and run name, tensorboard's <run dir>/<run.name>/
            accelerator.init_trackers(cfg.run.name, config=_flatten(to_dict(cfg)),
                                      init_kwargs={"wandb": {"name": cfg.run.name}})

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        if not self._is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._trackers:
            self.accelerator.log({k: v for k, v in row.items() if k != "step" and math.isfinite(v)}, step=step)

    def amend_last(self, metrics: Mapping[str, float]) -> None:
        """Add metrics to the last logged row (end-of-run results keep one row per step)."""
        last = self.history[-1]
        last.update({k: float(v) for k, v in metrics.items()})
        if not self._is_main:
            return
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        lines[-1] = json.dumps(last)
        atomic_write_text(self.metrics_path, "\n".join(lines) + "\n")
        if self._trackers:
            self.accelerator.log({k: float(v) for k, v in metrics.items() if math.isfinite(v)}, step=int(last["step"]))

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> Optional[Path]:
        """One evaluation's samples: ``samples/step_NNNNNN.jsonl`` (atomic; rows as given) and a table on the
        trackers (TRL's ``log_completions``): wandb and clearml get a table, tensorboard and comet a text."""
        if not self._is_main or not rows:
            return None
        path = self.path / "samples" / f"step_{step:06d}.jsonl"
        atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
        if self._trackers:
            log_table(self.accelerator.trackers, "completions", rows, step)
        return path

    def close(self) -> None:
        if self._trackers:
            self.accelerator.end_training()
        if self._locked:
            self._locked = False
            runlock.release(self.path)


def _markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    def cell(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows])


_NO_TABLE_NOTED: set[str] = set()


def log_table(trackers: Sequence[Any], name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
    """``rows`` as a table on each accelerate tracker: ``log_table`` where it has one (wandb, clearml), else a
    markdown text where it logs text (tensorboard, comet_ml); the others are told once where the rows are."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for tracker in trackers:
        if callable(getattr(tracker, "log_table", None)):
            tracker.log_table(name, columns=columns, data=[[r.get(c) for c in columns] for r in rows], step=step)
        elif tracker.name in ("tensorboard", "comet_ml"):
            tracker.log({name: _markdown(columns, rows)}, step=step)
        elif tracker.name not in _NO_TABLE_NOTED:
            _NO_TABLE_NOTED.add(tracker.name)
            logging.getLogger("r2m").info("tracker %s logs no tables: the %s are in the run's samples/*.jsonl",
                                          tracker.name, name)


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl. A last line without its newline is a write torn by a crash: it is logged
    and left out (a resume recomputes it); any other bad line is an error naming file and line."""
    path = Path(path)
    raw = path.read_bytes()
    lines = decode_lines(path, raw)
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not raw.endswith(b"\n"):
                logging.getLogger("r2m").warning("%s:%d: a torn last row (the run was killed while writing it); "
                                                 "left out", path, lineno)
                break
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    return rows


def plot_curves(
    rows: Sequence[dict],
    keys: Sequence[str],
    path: str | Path,
    title: str,
    ylabel: str = "value",
    labels: Optional[Sequence[str]] = None,
    vline: Optional[float] = None,
) -> Path:
    """Line plot of ``keys`` against ``step`` from metric rows (rows lacking a key are skipped)."""
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label in zip(keys, labels or keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=label, marker="." if len(xs) < 40 else None)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle="--", linewidth=1, label=f"peak gold (step {vline:g})")
    ax.set_xlabel("policy step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = atomic_savefig(fig, path)
    plt.close(fig)
    return path


class Peak(NamedTuple):
    step: int
    value: float


def peak(rows: Iterable[dict], key: str) -> Peak:
    """The step where ``key`` is highest, and that value."""
    best = max((r for r in rows if key in r), key=lambda r: r[key])
    return Peak(int(best["step"]), float(best[key]))
