"""The RL run's end: the last step's checkpoint, the final models with the policy's model card (and its upload,
run.push_to_hub), Table 3, the curves' plots and the result (:class:`RLResult`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from r2m.config.root import Config
from r2m.models.loading import save_model
from r2m.models.lora import is_peft, merged_copy
from r2m.recipes.alarm import AlarmWatch
from r2m.recipes.pipeline import Inputs
from r2m.recipes.rl.card import policy_card, push_policy, write_card
from r2m.recipes.rl.checkpoints import checkpoint_last_step
from r2m.recipes.rl.evaluation import rm_accuracy
from r2m.recipes.rl.state import Resumable
from r2m.runtime.distributed import sharded_state_dict
from r2m.runtime.runlog import RunDir, peak, plot_curves

log = logging.getLogger("r2m")


@dataclass(frozen=True)
class RLResult:
    run_dir: Path
    """Where config, metrics, plots and checkpoints went."""
    history: list[dict]
    """Per-step metrics (training and evaluation rows)."""
    final_eval: dict[str, float]
    """Evaluation metrics after the last step."""
    peak_gold_step: Optional[int]
    """Step of the highest evaluation gold reward (over-optimisation onset), when gold is known."""
    wall_s: float
    """Wall time of the run."""
    rm_accuracy: dict[str, float]
    """R2M: held-out pairwise accuracy of the vanilla RM and of R2M before/after (Table 3)."""
    alarm_step: Optional[int] = None
    """Step of the evaluation where the over-optimisation alarm fired (None: it did not; docs/MONITOR.md)."""
    best_before_alarm: Optional[Path] = None
    """rl.stop_on_alarm: checkpoints/best-before-alarm, the policy of the evaluation before the alarm's onset."""
    policy: Optional[Any] = None
    """The trained policy module (a peft model with policy.lora; the object passed in, trained in place)."""
    stop_reason: str = "steps"
    """Why the run ended: ``steps`` (rl.steps trained), ``kl_reached`` (an evaluation's KL passed rl.stop_at_kl at
    ``stop_step``), ``step_cap`` (rl.stop_at_kl set and not reached by rl.steps; ``stop_kl`` is the KL reached),
    ``alarm`` (rl.stop_on_alarm) or ``callback``."""
    stop_step: Optional[int] = None
    """The last step trained."""
    stop_kl: Optional[float] = None
    """The last evaluation's ``eval/kl`` (at the stop, or at the cap)."""
    r2m_movement: Optional[dict[str, float]] = None
    """R2M (and the Iterative RM-head): how far the GREBT update moved the RM, from the last update's row:
    ``r2m/weight_change`` (‖θ_t − θ_0‖ / ‖θ_0‖ over the trained parameters), ``r2m/fusion_weight_change`` (the
    same over the fusion alone, where the RM reads h) and the run's mean ``r2m/fusion_spread_share``
    (:meth:`r2m.updates.grebt.GREBTUpdater.movement_stats`)."""


# The curves every run has: (file, keys, labels, title, y label). Rows lacking a key are skipped, a plot whose
# keys no row has is not drawn.
CURVES = (
    ("rewards.png", ("reward/proxy", "eval/proxy"), ("rollouts", "evaluation"), "The run's reward (proxy)", "reward"),
    ("kl.png", ("kl", "eval/kl"), ("rollouts (mean per-token log-ratio)", "evaluation"), "KL to the reference", "KL"),
    ("length.png", ("response/length", "eval/length"), ("rollouts", "evaluation"), "Response length", "tokens"),
    ("policy_loss.png", ("loss/policy",), ("policy loss",), "Policy loss", "loss"),
    ("r2m_loss.png", ("r2m/grebt", "r2m/bt", "r2m/gre"), ("GREBT", "BT", "GRE"), "R2M online update: GREBT and its "
     "parts", "loss"),
)


def _write_plots(run: RunDir, write: bool = True) -> Optional[int]:
    """The run's plots (``write``: on the main process only): the curves of :data:`CURVES` for every run, and
    gold against proxy where the gold reward is known. Returns the step of peak gold reward (None without gold)."""
    rows = [r for r in run.history if "eval/gold" in r]
    peak_step = peak(rows, "eval/gold").step if rows else None
    if not write:
        return peak_step
    for name, keys, labels, title, ylabel in CURVES:
        if any(k in r for r in run.history for k in keys):
            plot_curves(run.history, list(keys), run.plots / name, title, ylabel, list(labels))
    if rows:
        plot_curves(rows, ["eval/gold", "eval/proxy"], run.plots / "gold_vs_proxy.png",
                    "Evaluation: gold vs proxy reward", "reward", ["gold (true)", "proxy (RM)"], vline=peak_step)
        train_rows = [r for r in run.history if "reward/gold" in r]
        plot_curves(train_rows, ["reward/gold", "reward/proxy"], run.plots / "train_rewards.png",
                    "Rollouts: gold vs proxy reward", "reward", ["gold (true)", "proxy (RM)"])
    return peak_step


def stop_record(cfg: Config, progress, last: int, final_eval: dict[str, float]) -> tuple[str, dict[str, float]]:
    """Why the run ended (:attr:`RLResult.stop_reason`) and, with rl.stop_at_kl, the ``stop/*`` metrics of its last
    row: ``stop/kl_reached`` (1: an evaluation passed rl.stop_at_kl; 0: rl.steps capped the run), ``stop/step`` and
    ``stop/eval_kl`` (the KL at the stop, or the last evaluation's at the cap)."""
    if progress.kl_stop is not None:
        return "kl_reached", {"stop/kl_reached": 1.0, "stop/step": progress.kl_stop["step"],
                              "stop/eval_kl": progress.kl_stop["kl"]}
    if progress.stop_reason is not None:
        return progress.stop_reason, {}
    if cfg.rl.stop_at_kl:
        return "step_cap", {"stop/kl_reached": 0.0, "stop/step": last,
                            "stop/eval_kl": final_eval.get("eval/kl", float("nan"))}
    return "steps", {}


def movement(history: list[dict]) -> Optional[dict[str, float]]:
    """R2M's movement over the run (:attr:`RLResult.r2m_movement`), None without GREBT updates."""
    rows = [r for r in history if "r2m/weight_change" in r]
    if not rows:
        return None
    out = {k: rows[-1][k] for k in ("r2m/weight_change", "r2m/fusion_weight_change") if k in rows[-1]}
    shares = [r["r2m/fusion_spread_share"] for r in rows if "r2m/fusion_spread_share" in r]
    if shares:
        out["r2m/fusion_spread_share"] = sum(shares) / len(shares)
    return out


def finish(parts: Resumable, cfg: Config, inputs: Inputs, run: RunDir, final_eval: dict[str, float],
           watch: AlarmWatch, t_start: float) -> RLResult:
    """The run's end: the last step's checkpoint, the final models (the policy with its model card, R2M), Table 3,
    the plots, and the upload (run.push_to_hub)."""
    models, grebt = parts.models, parts.grebt
    last = int(run.history[-1]["step"]) if run.history else parts.progress.start_step
    checkpoint_last_step(parts, cfg, run, last)  # an extended run (rl.steps raised, run.resume=auto) resumes here
    reason, stop_metrics = stop_record(cfg, parts.progress, last, final_eval)
    if stop_metrics and run.history:
        run.amend_last(stop_metrics)
    final = run.checkpoints / "final"
    policy = models.unwrapped_policy()
    policy_state = sharded_state_dict(models.acc, models.policy)  # a sharded policy's full weights, gathered once
    if models.acc.is_main_process:  # one writer: the ranks' copies are identical
        if is_peft(policy):
            # A plain merged model (AutoModelForCausalLM loads it), and the adapter itself under final/adapter.
            save_model(merged_copy(policy), models.tokenizer, final)
            save_model(policy, models.tokenizer, final / "adapter")
        else:
            # In the policy's dtype: the float32 master weights are an artefact of training.
            save_model(policy, models.tokenizer, final, policy_state, dtype=cfg.policy.dtype)
        if grebt is not None:
            grebt.model.save(final / "r2m", base_rm=str(parts.rm_path),
                             extra={"omega_floor": cfg.reward.r2m.omega_floor, "total_steps": cfg.rl.steps})
    models.acc.wait_for_everyone()
    rm_acc = rm_accuracy(grebt, parts.progress.r2m_before, models, cfg, inputs.pref_eval, run, last)
    if rm_acc:
        run.amend_last(rm_acc)
    if models.acc.is_main_process:
        write_card(final, policy_card(cfg, inputs.policy, {**final_eval, **rm_acc}, cfg.run.hub_model_id))
    peak_step = _write_plots(run, write=models.acc.is_main_process)
    run.close()
    if cfg.run.push_to_hub and models.acc.is_main_process:
        push_policy(final, cfg)
    return RLResult(run.path, run.history, final_eval, peak_step, time.perf_counter() - t_start, rm_acc,
                    watch.alarm_step, watch.best_path, policy, reason, last,
                    final_eval.get("eval/kl"), movement(run.history))
