"""The RL run's end: the final models, the result (:class:`RLResult`) and the training-curve plots."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from r2m.runtime.distributed import sharded_state_dict
from r2m.runtime.runlog import RunDir, peak, plot_curves
from r2m.models.loading import save_model
from r2m.models.lora import is_peft, merged_copy

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


def _write_plots(run: RunDir, write: bool = True) -> Optional[int]:
    """The run's plots (``write``: on the main process only); returns the step of peak gold reward."""
    rows = [r for r in run.history if "eval/gold" in r]
    if not rows:
        return None
    p = peak(rows, "eval/gold")
    if not write:
        return p.step
    plot_curves(rows, ["eval/gold", "eval/proxy"], run.plots / "gold_vs_proxy.png",
                "Evaluation: gold vs proxy reward", "reward", ["gold (true)", "proxy (RM)"], vline=p.step)
    train_rows = [r for r in run.history if "reward/gold" in r]
    plot_curves(train_rows, ["reward/gold", "reward/proxy"], run.plots / "train_rewards.png",
                "Rollouts: gold vs proxy reward", "reward", ["gold (true)", "proxy (RM)"])
    plot_curves(train_rows, ["kl"], run.plots / "kl.png", "KL to the reference (mean per-token log-ratio)", "KL")
    if any("r2m/grebt" in r for r in run.history):
        r2m_rows = [r for r in run.history if "r2m/grebt" in r]
        plot_curves(r2m_rows, ["r2m/grebt", "r2m/bt", "r2m/gre"], run.plots / "r2m_loss.png",
                    "R2M online update: GREBT and its parts", "loss", ["GREBT", "BT", "GRE"])
    return p.step


class ReportMixin:
    """The end of :class:`r2m.recipes.rl.run.RLRun`."""

    def finish(self) -> RLResult:
        final = self.run.checkpoints / "final"
        policy = self.acc.unwrap_model(self.policy)
        policy_state = sharded_state_dict(self.acc, self.policy)
        if self.acc.is_main_process:  # one writer: the ranks' copies are identical
            if is_peft(policy):
                # A plain merged model (AutoModelForCausalLM loads it), and the adapter itself under final/adapter.
                save_model(merged_copy(policy), self.tok, final)
                save_model(policy, self.tok, final / "adapter")
            else:
                save_model(policy, self.tok, final, policy_state)
            if self.rm_updater is not None:
                self.rm_updater.model.save(final / "r2m", base_rm=str(self.inputs.reward_model),
                                           extra={"omega_floor": self.cfg.reward.r2m.omega_floor,
                                                  "total_steps": self.cfg.rl.steps})
        self.acc.wait_for_everyone()
        rm_acc = self.rm_accuracy()
        if rm_acc:
            self.run.amend_last(rm_acc)
        peak_step = None
        if self.gold_fn is not None:
            peak_step = _write_plots(self.run, write=self.acc.is_main_process)
        self.run.close()
        return RLResult(self.run.path, self.run.history, self.final_eval, peak_step,
                        time.perf_counter() - self.t_start, rm_acc, self.watch.alarm_step, self.watch.best_path, policy)
