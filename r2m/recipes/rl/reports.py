"""The RL run's outputs: each evaluation's samples, and at the end the last step's checkpoint, the final models with
the policy's model card (and its upload, run.push_to_hub), the result (:class:`RLResult`) and the curves' plots."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from r2m.models.loading import save_model
from r2m.models.lora import is_peft, merged_copy
from r2m.recipes.rl.card import policy_card, push_policy, write_card
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


def sample_rows(samples, step: int) -> list[dict]:
    """One row per evaluation sample (:class:`r2m.eval.policy.PolicySamples`): prompt, completion, the run's reward,
    the unmodified RM's and the gold reward where known, and the completion's length in tokens."""
    rows = []
    for i, (prompt, completion) in enumerate(zip(samples.prompts, samples.responses)):
        row = {"step": step, "prompt": str(prompt), "completion": completion}
        for key, values in (("reward", samples.proxy), ("reward_vanilla", samples.vanilla), ("gold", samples.gold)):
            if values is not None:
                row[key] = float(values[i])
        row["length"] = int(samples.lengths[i])
        rows.append(row)
    return rows


class ReportMixin:
    """The end of :class:`r2m.recipes.rl.run.RLRun`."""

    def log_samples(self, step: int, samples) -> None:
        """An evaluation's samples: ``samples/step_NNNNNN.jsonl`` in the run directory and a table on the trackers."""
        self.run.log_samples(step, sample_rows(samples, step))

    def finish(self) -> RLResult:
        last = int(self.run.history[-1]["step"]) if self.run.history else self.start_step
        self.checkpoint_last_step(last)  # an extended run (rl.steps raised, run.resume=auto) resumes here
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
        if self.acc.is_main_process:
            card = policy_card(self.cfg, self.inputs.policy, {**self.final_eval, **rm_acc}, self.cfg.run.hub_model_id)
            write_card(final, card)
        peak_step = _write_plots(self.run, write=self.acc.is_main_process)
        self.run.close()
        if self.cfg.run.push_to_hub and self.acc.is_main_process:
            push_policy(final, self.cfg)
        return RLResult(self.run.path, self.run.history, self.final_eval, peak_step,
                        time.perf_counter() - self.t_start, rm_acc, self.watch.alarm_step, self.watch.best_path, policy)
