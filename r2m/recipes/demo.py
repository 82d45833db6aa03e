"""``r2m demo``: world -> SFT policy -> reward model -> RL arms -> evaluation table and plot.

Each arm is a full ``r2m rl`` run (its own run directory under ``<run.root>/<run.name>-<arm>``);
the demo adds the comparison: gold reward, win rate against SFT judged by gold, proxy reward, KL,
length and the step at which gold peaked (the onset of reward over-optimisation).
"""

from __future__ import annotations

import time
from pathlib import Path

from r2m.config import Config, RewardSource, replace_path
from r2m.reports.tables import format_table
from r2m.runtime.runlog import peak
from r2m.fileio import atomic_savefig, atomic_write_text
from r2m.data.jsonl import read_preferences
from r2m.eval.rm_accuracy import pairwise_accuracy
from r2m.experience.reward_factory import build_reward
from r2m.recipes.pipeline import ensure_world_policy, ensure_world_rm, world_data
from r2m.recipes.rl.run import run_rl
from r2m.utils import resolve_device


ARM_NAMES = {"rloo": "RLOO (frozen proxy RM)", "r2m": "RLOO + R2M", "gold": "RL on gold (ceiling)"}


def arm_config(cfg: Config, arm: str) -> Config:
    """The RL config of one demo arm."""
    source = RewardSource.GOLD if arm == "gold" else RewardSource.MODEL
    return replace_path(cfg, run__name=f"{cfg.run.name}-{arm}", reward__source=source,
                        reward__r2m__enabled=arm == "r2m")


def _stage(name: str, fn, walls: dict):
    t0 = time.perf_counter()
    out = fn()
    walls[name] = time.perf_counter() - t0
    print(f"[demo] {name}: {walls[name]:.1f}s", flush=True)
    return out


def run_demo(cfg: Config) -> dict:

    walls: dict[str, float] = {}
    files = _stage("world data", lambda: world_data(cfg), walls)
    _stage("SFT policy", lambda: ensure_world_policy(cfg), walls)
    rm_path = _stage("reward model", lambda: ensure_world_rm(cfg), walls)
    rm = build_reward(cfg, str(rm_path), resolve_device(cfg.run.device)).rm
    acc = pairwise_accuracy(rm, read_preferences(files.pref_eval))
    print(f"[demo] proxy RM held-out accuracy: {acc.accuracy:.3f} vs labels, {acc.gold_accuracy:.3f} vs gold "
          f"(n={acc.n})", flush=True)

    results = {}
    for arm in cfg.demo.arms:
        results[arm] = _stage(f"RL arm '{arm}'", lambda a=arm: run_rl(arm_config(cfg, a)), walls)

    table = demo_table(results)
    out_dir = Path(cfg.run.root) / cfg.run.name
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = demo_plot(results, out_dir / "plots" / "gold_vs_proxy.png")
    atomic_write_text(out_dir / "table.md", format_table(*table, markdown=True) + "\n")
    print("\n" + format_table(*table))
    print(f"\nRM accuracy (held-out pairs): {acc.accuracy:.3f} vs labels, {acc.gold_accuracy:.3f} vs gold")
    for arm, res in results.items():
        if res.rm_accuracy:
            print(f"{ARM_NAMES.get(arm, arm)} RM accuracy (Table 3, ω(T)): " + ", ".join(
                f"{k.split('/')[1]} {v:.3f}" for k, v in res.rm_accuracy.items()))
    print("wall time per stage: " + ", ".join(f"{k} {v:.0f}s" for k, v in walls.items()))
    print(f"plot: {plot}\ntable: {out_dir / 'table.md'}")
    return {"table": table, "walls": walls, "rm_accuracy": acc, "results": results}


def demo_table(results: dict) -> tuple[list[str], list[list]]:
    """Final-policy metrics per arm. "proxy" is each arm's own reward (R2M's with feedback); "RM" is
    the frozen vanilla proxy RM on the same samples, comparable across arms."""
    nan = float("nan")
    headers = ["policy", "gold", "win vs SFT", "proxy", "RM", "proxy-gold", "KL", "length", "exact", "peak gold",
               "@step", "s/step"]
    rows = []
    first = next(iter(results.values()))
    sft = next(r for r in first.history if r["step"] == 0 and "eval/gold" in r)
    rows.append(["SFT", sft["eval/gold"], 0.5, nan, nan, nan, 0.0, sft["eval/length"], sft["eval/exact_match"],
                 sft["eval/gold"], 0, nan])
    for arm, res in results.items():
        f = res.final_eval
        evals = [r for r in res.history if "eval/gold" in r]
        p = peak(evals, "eval/gold")
        steps = [r["time/step"] for r in res.history if "time/step" in r]
        proxy = f.get("eval/proxy", nan)
        rows.append([ARM_NAMES.get(arm, arm), f["eval/gold"], f.get("eval/win_rate_vs_sft", nan), proxy,
                     f.get("eval/rm_vanilla", proxy if arm != "gold" else nan), f.get("eval/proxy_gold_gap", nan),
                     f["eval/kl"], f["eval/length"], f["eval/exact_match"], p.value, p.step,
                     sum(steps) / len(steps) if steps else nan])
    return headers, rows


def demo_plot(results: dict, path: Path) -> Path:
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for arm, res in results.items():
        evals = [r for r in res.history if "eval/gold" in r]
        steps = [r["step"] for r in evals]
        line, = axes[0].plot(steps, [r["eval/gold"] for r in evals], marker=".", label=f"{arm}: gold")
        if "eval/proxy" in evals[0]:
            axes[1].plot(steps, [r["eval/proxy"] for r in evals], marker=".", color=line.get_color(),
                         label=f"{arm}: proxy")
        p = peak(evals, "eval/gold")
        axes[0].axvline(p.step, color=line.get_color(), linestyle=":", linewidth=1)
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
