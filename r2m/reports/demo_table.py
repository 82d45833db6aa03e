"""The demo's table: each arm's final-policy metrics as mean and spread over the RL seeds.

One run gives :func:`run_metrics` (a dict of the table's columns); the seeds of one arm give a
:class:`Spread` per column (:func:`spread`), shown as ``mean ± sd`` (sample sd, n-1) in the table and kept
whole (every seed's value, min, max) in ``table.json``. The SFT row is the same for every seed: evaluation
samples with a fixed seed.
"""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple, Sequence

from r2m.eval.trajectory import eval_trajectory, gold_at_kl
from r2m.runtime.runlog import peak

ARM_NAMES = {"rloo": "RLOO (frozen proxy RM)", "r2m": "RLOO + R2M", "gold": "RL on gold (ceiling)"}

COLUMNS = ("gold", "gold@KL", "win vs SFT", "proxy", "RM", "proxy-gold", "KL", "length", "exact", "peak gold",
           "@step", "s/step")
"""The metric columns after "policy" (``gold@KL`` is headed with the budget)."""


class Spread(NamedTuple):
    """One column of one arm over its seeds (NaN values, e.g. a budget not reached, are left out and counted)."""

    mean: float
    sd: float
    """Sample standard deviation (n - 1); NaN with one value."""
    lo: float
    hi: float
    n: int
    """Seeds with a value."""
    of: int
    """Seeds run."""

    def cell(self) -> str:
        if self.n == 0:
            return "-"
        text = f"{self.mean:.3f}" if self.n == 1 else f"{self.mean:.3f} ± {self.sd:.3f}"
        return text if self.n == self.of else f"{text} ({self.n}/{self.of})"


def spread(values: Sequence[float]) -> Spread:
    """Mean, sd, min and max of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        nan = float("nan")
        return Spread(nan, nan, nan, nan, 0, len(values))
    sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return Spread(statistics.fmean(xs), sd, min(xs), max(xs), len(xs), len(values))


def _evals(res) -> list[dict]:
    return [r for r in res.history if "eval/gold" in r]


def gold_at_budget(res, budget: float) -> float:
    """Gold interpolated at KL ``budget`` on the run's evaluation points (NaN: not reached)."""
    g = gold_at_kl(eval_trajectory(res.history), budget).gold
    return float("nan") if g is None else g


def run_metrics(arm: str, res, budget: float) -> dict[str, float]:
    """The table's columns for one RL run (its final evaluation, its peak, its step time)."""
    nan = float("nan")
    f = res.final_eval
    p = peak(_evals(res), "eval/gold")
    steps = [r["time/step"] for r in res.history if "time/step" in r]
    proxy = f.get("eval/proxy", nan)
    return {"gold": f["eval/gold"], "gold@KL": gold_at_budget(res, budget),
            "win vs SFT": f.get("eval/win_rate_vs_sft", nan), "proxy": proxy,
            "RM": f.get("eval/rm_vanilla", proxy if arm != "gold" else nan),
            "proxy-gold": f.get("eval/proxy_gold_gap", nan), "KL": f["eval/kl"], "length": f["eval/length"],
            "exact": f["eval/exact_match"], "peak gold": p.value, "@step": float(p.step),
            "s/step": sum(steps) / len(steps) if steps else nan}


def sft_metrics(res) -> dict[str, float]:
    """The SFT policy's row, from a run's step-0 evaluation."""
    nan = float("nan")
    sft = next(r for r in res.history if r["step"] == 0 and "eval/gold" in r)
    return {"gold": sft["eval/gold"], "gold@KL": nan, "win vs SFT": 0.5, "proxy": nan, "RM": nan,
            "proxy-gold": nan, "KL": 0.0, "length": sft["eval/length"], "exact": sft["eval/exact_match"],
            "peak gold": sft["eval/gold"], "@step": 0.0, "s/step": nan}


class DemoTable(NamedTuple):
    headers: list[str]
    rows: list[list[str]]
    """Formatted cells (``mean ± sd``)."""
    per_seed: dict[str, dict[str, list[float]]]
    """Arm -> column -> one value per seed (the seeds' order of ``demo.seeds``), for table.json."""
    spreads: dict[str, dict[str, Spread]]


def demo_table(results: dict[str, list], budget: float) -> DemoTable:
    """``results``: arm -> its runs, one per seed. Rows: SFT, then each arm's mean ± sd over seeds."""
    first = next(iter(results.values()))[0]
    per_seed = {"sft": {c: [v] for c, v in sft_metrics(first).items()}}
    for arm, runs in results.items():
        metrics = [run_metrics(arm, r, budget) for r in runs]
        per_seed[arm] = {c: [m[c] for m in metrics] for c in COLUMNS}
    spreads = {arm: {c: spread(vals) for c, vals in cols.items()} for arm, cols in per_seed.items()}
    headers = ["policy", *(f"gold@KL{budget:g}" if c == "gold@KL" else c for c in COLUMNS)]
    rows = [[ARM_NAMES.get(arm, "SFT" if arm == "sft" else arm), *(spreads[arm][c].cell() for c in COLUMNS)]
            for arm in per_seed]
    return DemoTable(headers, rows, per_seed, spreads)
