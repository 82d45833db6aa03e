"""SER's report: Table 1, the per-loop table with every status decision, Figures 2-3."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from r2m.config.enums import PairLoss
from r2m.ser.rules import Kept
from r2m.reports.tables import format_table
from r2m.fileio import atomic_savefig

STATE_FILE = "ser_state.json"

# ---------------------------------------------------------------------------------------------
# Tables and the decision log
# ---------------------------------------------------------------------------------------------


def _trained(row: dict) -> int:
    return int(row.get("ser/train_pairs", row["ser/selected"]))


def ser_table(history: Sequence[dict], full: dict, sizes: dict[str, int], kept: Optional[Kept] = None,
              loss: PairLoss = PairLoss.BT) -> tuple[list[str], list[list]]:
    """SER Table 1 for this run: held-out (data.pref_eval) accuracy of Loop 0, SER (the kept loop) and Full,
    every one trained with ``loss`` (named in the first header)."""
    headers = [f"RM ({PairLoss(loss).value} loss)", "human labels", "pairs trained", "test acc", "test gold acc",
               "val acc", "test acc, equal length", "test acc, unequal length"]
    labelled = sizes["seed"] + sizes["val"]
    first, ser = history[0], history[kept.index if kept is not None else -1]
    return headers, [
        ["Loop 0 (seed)", labelled, _trained(first), *_accuracies(first)],
        [f"SER (loop {ser['loop']})", labelled, _trained(ser), *_accuracies(ser)],
        ["Full dataset", sizes["rm"], int(full["ser/selected"]), *_accuracies(full)],
    ]


def _accuracies(row: dict) -> list[float]:
    """Table 1's accuracy columns of one RM (the length split is NaN in a run made before it was measured)."""
    split = [row.get(k) for k in ("ser/test_acc_equal_len", "ser/test_acc_unequal_len")]
    return [row["ser/test_acc"], row["ser/test_gold_acc"], row["ser/val_acc"],
            *[float("nan") if v is None else v for v in split]]


def loop_table(history: Sequence[dict]) -> tuple[list[str], list[list]]:
    """Per-loop statistics (SER Figures 2-3) with the evidence each loop's status was decided on."""
    nan = float("nan")
    headers = ["loop", "status", "selected", "% RM data", "trained", "val confident", "val delta_p", "prev gain",
               "pseudo acc", "pseudo gold", "pool acc", "val acc", "test acc", "test gold"]
    rows = [[r["loop"], r["status"], int(r["ser/selected"]), 100 * r["ser/selected_frac"], _trained(r),
             r.get("ser/val_confident", nan), r.get("ser/val_delta_p", nan), r.get("ser/status1_gain", nan),
             r.get("ser/pseudo_acc", nan), r.get("ser/pseudo_gold_acc", nan), r.get("ser/pool_acc", nan),
             r["ser/val_acc"], r["ser/test_acc"], r["ser/test_gold_acc"]] for r in history]
    return headers, rows


def decision_lines(history: Sequence[dict], stop: Optional[dict], kept: Optional[Kept]) -> list[str]:
    """Every status decision with its reason, how the loop ended, and which loop is kept and why."""
    lines = [f"- loop {r['loop']}: {r['status']} ({r.get('decision', '')})" for r in history]
    stop = stop or {}
    if stop.get("decision"):
        lines.append(f"- loop {stop['loop']}: {stop['reason']} ({stop['decision']})")
    lines.append(f"- ended: {stop.get('reason')} at loop {stop.get('loop')}")
    if kept is not None:
        lines.append(f"- kept: loop {kept.index}, {kept.reason}")
    return lines


def print_loop(row: dict) -> None:
    extra = ""
    if row["loop"] > 0:
        extra = (f", pseudo-label acc {row['ser/pseudo_acc']:.3f} (gold {row['ser/pseudo_gold_acc']:.3f})"
                 f", pool acc {row['ser/pool_acc']:.3f}")
    print(f"[ser] loop {row['loop']} ({row['status']}): {int(row['ser/selected'])} pairs selected "
          f"({100 * row['ser/selected_frac']:.1f}% of the RM data), {_trained(row)} trained{extra}; "
          f"val acc {row['ser/val_acc']:.3f}, test acc {row['ser/test_acc']:.3f} (gold {row['ser/test_gold_acc']:.3f})",
          flush=True)


def write_report(run_dir: Path, history: Sequence[dict], stop: Optional[dict], full: dict, table: tuple,
                 kept: Optional[Kept] = None) -> list[Path]:
    """table.md and the plots; ``stop`` and ``full`` in the ser_state.json layout."""
    text = ("## SER Table 1 (held-out pairs)\n\n" + format_table(*table, markdown=True) + "\n\n## Loops\n\n"
            + format_table(*loop_table(history), markdown=True) + "\n\n## Decisions\n\n"
            + "\n".join(decision_lines(history, stop, kept)) + "\n")
    (run_dir / "table.md").write_text(text)
    return [plot_accuracy(history, full, run_dir / "plots" / "accuracy_per_loop.png"),
            plot_data_fraction(history, run_dir / "plots" / "data_per_loop.png")]


def print_report(history: Sequence[dict], stop: Optional[dict], table: tuple, ppo: Optional[dict], run_dir: Path,
                 kept: Optional[Kept] = None) -> None:
    print("\nSER loops\n" + format_table(*loop_table(history)))
    print("\nSER decisions\n" + "\n".join(decision_lines(history, stop, kept)))
    print("\nSER Table 1: reward-model accuracy on held-out pairs (test = data.pref_eval)\n" + format_table(*table))
    if ppo is not None:
        nan = float("nan")
        rows = [["SFT", ppo["sft_gold"], 0.5, nan, 0.0, ppo["sft_length"]],
                ["PPO + SER RM", ppo.get("eval/gold", nan), ppo.get("eval/win_rate_vs_sft", nan),
                 ppo.get("eval/proxy", nan), ppo.get("eval/kl", nan), ppo.get("eval/length", nan)]]
        print(f"\nPPO with the kept RM ({ppo['rm_dir']}, {ppo['steps']} steps; gold judge)\n"
              + format_table(["policy", "gold", "win vs SFT", "proxy", "KL", "length"], rows))
    print(f"\nrun directory: {run_dir} (metrics.jsonl, table.md, plots/, {STATE_FILE})", flush=True)


# ---------------------------------------------------------------------------------------------
# Figures 2-3
# ---------------------------------------------------------------------------------------------


def _plt():
    import matplotlib  # heavy: lazy

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: lazy

    return plt


def plot_accuracy(history: Sequence[dict], full: dict, path: Path) -> Path:
    """SER Figure 2: accuracy per loop, with the Full-dataset baseline as horizontal lines."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    loops = [r["loop"] for r in history]
    for key, label in [("ser/test_acc", "test acc (labels)"), ("ser/test_gold_acc", "test acc (gold)"),
                       ("ser/val_acc", "validation acc")]:
        line, = ax.plot(loops, [r[key] for r in history], marker="o", label=label)
        if key != "ser/val_acc":
            ax.axhline(full[key], color=line.get_color(), linestyle="--", linewidth=1, label=f"Full dataset: {label}")
    pseudo = [(r["loop"], r["ser/pseudo_acc"]) for r in history if "ser/pseudo_acc" in r]
    if pseudo:
        xs, ys = zip(*pseudo)
        ax.plot(xs, ys, marker="s", linestyle=":", label="pseudo-label acc (selected pairs)")
    ax.set_xticks(loops)
    ax.set_xlabel("SER loop (0: seed RM)")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("SER: reward-model accuracy per loop")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_data_fraction(history: Sequence[dict], path: Path) -> Path:
    """SER Figure 3: share of the RM data each loop trains on (Loop 0: the labelled seed)."""
    plt = _plt()
    from matplotlib.patches import Patch  # heavy: lazy

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    loops = [r["loop"] for r in history]
    fracs = [100 * r["ser/selected_frac"] for r in history]
    colors = ["tab:grey" if r["loop"] == 0 else "tab:blue" for r in history]
    bars = ax.bar(loops, fracs, color=colors)
    for bar, r in zip(bars, history):
        ax.annotate(r["status"], (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    full = ax.axhline(100, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(loops)
    ax.set_xlabel("SER loop")
    ax.set_ylabel("% of the RM part trained on")
    ax.set_title("SER: data selected per loop (bar labels: learning status)")
    ax.set_ylim(0, 140)  # room for the legend above the Full line
    ax.legend([Patch(color="tab:grey"), Patch(color="tab:blue"), full],
              ["human-labelled seed (loop 0)", "self-labelled, filtered (loops >= 1)", "Full dataset (all RM labels)"],
              fontsize=8, loc="upper left")
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_savefig(fig, path)
    plt.close(fig)
    return path
