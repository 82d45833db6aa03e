"""``r2m demo``: world -> SFT policy -> reward model -> RL arms x seeds -> evaluation table and plot.

Each arm runs once per ``demo.seeds`` seed, a full ``r2m rl`` run (its own run directory
``<run.root>/<run.name>-<arm>-s<seed>``); the demo adds the comparison, as mean ± sd over the seeds
(r2m.reports.demo_table): gold reward, gold at a matched KL (``demo.kl_budget``), win rate against SFT
judged by gold, proxy reward, KL, length and the step at which gold peaked (the onset of reward
over-optimisation). ``<run.root>/<run.name>/table.json`` keeps every seed's value.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from r2m.config.root import Config
from r2m.config.enums import RewardSource
from r2m.config.parsing import replace_path
from r2m.reports.demo_table import ARM_NAMES, demo_table, spread
from r2m.reports.tables import format_table
from r2m.runtime.runlog import peak
from r2m.fileio import atomic_savefig, atomic_write_text
from r2m.data.jsonl import read_preferences
from r2m.eval.rm_accuracy import pairwise_accuracy
from r2m.experience.reward_factory import build_reward
from r2m.recipes.pipeline import ensure_world_policy, ensure_world_rm, world_data
from r2m.recipes.rl.run import run_rl
from r2m.utils import resolve_device


def arm_config(cfg: Config, arm: str, seed: int) -> Config:
    """The RL config of one demo arm and seed (run directory ``<run.name>-<arm>-s<seed>``)."""
    source = RewardSource.GOLD if arm == "gold" else RewardSource.MODEL
    return replace_path(cfg, run__name=f"{cfg.run.name}-{arm}-s{seed}", run__seed=seed, reward__source=source,
                        reward__r2m__enabled=arm == "r2m")


def _stage(name: str, fn, walls: dict):
    t0 = time.perf_counter()
    out = fn()
    walls[name] = time.perf_counter() - t0
    print(f"[demo] {name}: {walls[name]:.1f}s", flush=True)
    return out


def _print_table3(results: dict[str, list]) -> None:
    for arm, runs in results.items():
        accs = [r.rm_accuracy for r in runs if r.rm_accuracy]
        if accs:
            cells = ", ".join(f"{k.split('/')[1]} {spread([a[k] for a in accs]).cell()}" for k in accs[0])
            print(f"{ARM_NAMES.get(arm, arm)} RM accuracy (Table 3, ω(T)), over {len(accs)} seeds: {cells}")


def _finite(node):
    """NaN (no value: a budget not reached, a column an arm lacks) as null, so table.json is strict JSON."""
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite(v) for v in node]
    return None if isinstance(node, float) and math.isnan(node) else node


def run_demo(cfg: Config) -> dict:

    walls: dict[str, float] = {}
    files = _stage("world data", lambda: world_data(cfg), walls)
    _stage("SFT policy", lambda: ensure_world_policy(cfg), walls)
    rm_path = _stage("reward model", lambda: ensure_world_rm(cfg), walls)
    rm = build_reward(cfg, str(rm_path), resolve_device(cfg.run.device)).rm
    acc = pairwise_accuracy(rm, read_preferences(files.pref_eval))
    print(f"[demo] proxy RM held-out accuracy: {acc.accuracy:.3f} vs labels, {acc.gold_accuracy:.3f} vs gold "
          f"(n={acc.n})", flush=True)

    results: dict[str, list] = {arm: [] for arm in cfg.demo.arms}
    for arm in cfg.demo.arms:
        for seed in cfg.demo.seeds:
            run = _stage(f"RL arm '{arm}' seed {seed}", lambda a=arm, s=seed: run_rl(arm_config(cfg, a, s)), walls)
            results[arm].append(run)

    table = demo_table(results, cfg.demo.kl_budget)
    out_dir = Path(cfg.run.root) / cfg.run.name
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = demo_plot(results, out_dir / "plots" / "gold_vs_proxy.png")
    note = (f"Mean ± sd over RL seeds {list(cfg.demo.seeds)} (one world, SFT policy and proxy RM). CPU results "
            "are bit-identical only at the same thread count and CPU.")
    atomic_write_text(out_dir / "table.md", format_table(table.headers, table.rows, markdown=True) + f"\n\n{note}\n")
    atomic_write_text(out_dir / "table.json", json.dumps(_finite(
        {"seeds": list(cfg.demo.seeds), "kl_budget": cfg.demo.kl_budget, "per_seed": table.per_seed,
         "spread": {a: {c: s._asdict() for c, s in cols.items()} for a, cols in table.spreads.items()}}),
        indent=1, allow_nan=False))
    print("\n" + format_table(table.headers, table.rows) + "\n" + note)
    print(f"\nRM accuracy (held-out pairs): {acc.accuracy:.3f} vs labels, {acc.gold_accuracy:.3f} vs gold")
    _print_table3(results)
    print("wall time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in walls.items()))
    print(f"plot: {plot}\ntable: {out_dir / 'table.md'}")
    return {"table": table, "walls": walls, "rm_accuracy": acc, "results": results}


def demo_plot(results: dict, path: Path) -> Path:
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for arm, runs in results.items():
        color = None
        for i, res in enumerate(runs):  # one line per seed, one colour per arm
            evals = [r for r in res.history if "eval/gold" in r]
            steps = [r["step"] for r in evals]
            label = f"{arm}: gold" if i == 0 else None
            line, = axes[0].plot(steps, [r["eval/gold"] for r in evals], marker=".", label=label, color=color,
                                 alpha=0.8)
            color = line.get_color()
            if "eval/proxy" in evals[0]:
                axes[1].plot(steps, [r["eval/proxy"] for r in evals], marker=".", color=color, alpha=0.8,
                             label=f"{arm}: proxy" if i == 0 else None)
            axes[0].axvline(peak(evals, "eval/gold").step, color=color, linestyle=":", linewidth=1)
    axes[0].set_title("Gold (true) reward on the fixed eval prompts")
    axes[1].set_title("Proxy reward (the RM the policy optimises)")
    for ax in axes:
        ax.set_xlabel("policy step")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Reward over-optimisation in the gold-reward world (dotted: step of peak gold)")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
    return path
