"""The over-optimisation alarm inside an RL run (docs/MONITOR.md).

:class:`AlarmWatch` is one of an RL run's parts: at every evaluation it computes the
label-free signals (:func:`r2m.eval.monitor.monitor_signals`), appends them to the evaluation history and
applies :func:`r2m.core.monitor.first_alarm` with ``rl.monitor``'s thresholds. The alarm always runs and is
logged (``monitor/alarm`` on the evaluation where it fires, ``monitor/tripped`` at each one); with
``rl.stop_on_alarm`` the run stops there with a checkpoint, and the policy of the evaluation before the
alarm's onset is kept as ``checkpoints/best-before-alarm``.

Disk: while armed (``rl.stop_on_alarm``) a policy snapshot (weights and tokenizer, no optimiser) is written
at each evaluation as ``checkpoints/eval-NNNNNN`` and only the last ``patience`` are kept -- exactly those
one of which can become the onset - 1 evaluation of an alarm at a later evaluation. Unarmed, none is written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from r2m.runtime.checkpoint import rng_state, set_rng_state
from r2m.config.root import Config
from r2m.config.enums import RewardSource
from r2m.core.monitor import Alarm, first_alarm, tripped_signals
from r2m.runtime.distributed import sharded_state_dict
from r2m.eval.monitor import MonitorModels, PreviousEval, monitor_signals
from r2m.eval.policy import PolicySamples
from r2m.models.loading import load_reward_model, load_tokenizer, save_model
from r2m.models.lora import is_peft, merged_copy
from r2m.models.reward import RewardModel
from r2m.recipes.pipeline import ensure_world_check_rm, user_models, world_check_rm_dir
from r2m.experience.rewards import ModelReward
from r2m.fileio import atomic_dir

if TYPE_CHECKING:
    from r2m.recipes.rl.state import Models
    from r2m.runtime.distributed import Dist
    from r2m.runtime.runlog import RunDir

log = logging.getLogger("r2m")

BEST = "best-before-alarm"
"""The directory under checkpoints/ that keeps the policy of the evaluation before the alarm's onset."""
_SNAPSHOT = re.compile(r"^eval-(\d{6,})$")
EVAL_MARK = "eval/length"
"""A key every evaluation row has (r2m.eval.policy.summarize): how evaluation rows are told from training rows."""


def describe(alarm: Alarm, steps: list[int]) -> str:
    """One line: where the alarm fires (as policy steps) and which signals tripped."""
    if alarm.index is None:
        return "no alarm"
    why = ", ".join(f"{r.signal.value}={r.value:.4g} ({r.rule.value} {r.threshold:g}"
                    + (f" vs baseline {r.baseline:.4g})" if r.baseline is not None else ")") for r in alarm.reasons)
    before = steps[alarm.onset - 1] if alarm.onset > 0 else None
    return (f"alarm at step {steps[alarm.index]} (evaluation {alarm.index}; onset step {steps[alarm.onset]}; "
            f"checkpoint before: {'none' if before is None else f'step {before}'}): {why}")


def check_rm_path(cfg: Config, world: bool) -> Optional[str]:
    """rl.monitor.check_rm, else in the gold-reward world (``world``: the run's prompts are the world's) the
    world's check RM, built now if needed; None: the check-disagreement signal is off."""
    mc = cfg.rl.monitor
    if mc.check_rm is not None:
        return mc.check_rm
    if not (world and mc.world_check_rm and cfg.reward.source == RewardSource.MODEL and not user_models(cfg)):
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not world_check_rm_dir(cfg).exists():
        # Several processes cannot build a world artifact (r2m.pipeline); `r2m world --models` builds it.
        log.warning("monitor: the world's check RM is not built (%s), so monitor/check_disagreement is off; build it "
                    "in one process with `r2m world --models` and the same config", world_check_rm_dir(cfg))
        return None
    return str(ensure_world_check_rm(cfg))


def build_check_reward(cfg: Config, world: bool, policy_tokenizer, device: torch.device) -> Optional[ModelReward]:
    """The independent check RM as a reward function, or None (the signal is then off). Building or loading it
    draws no random number the run would see: the RNG states are put back."""
    saved = rng_state()
    try:
        path = check_rm_path(cfg, world)
        if path is None:
            return None
        tok = load_tokenizer(path, cfg.reward.trust_remote_code)
        model = load_reward_model(path, cfg.reward.dtype, cfg.reward.trust_remote_code, tok.pad_token_id,
                                  cfg.run.allow_unsafe_weights)
        rm = RewardModel(model, tok, cfg.reward.max_length, name=f"check reward model {path}").to(device)
        rm.read_policy(policy_tokenizer)
        log.info("monitor: check RM %s", path)
        return ModelReward(rm)
    finally:
        set_rng_state(saved)


def save_policy_snapshot(models: "Models", dest: Path) -> None:
    """The policy (merged when LoRA) and tokenizer into ``dest``, atomically; every rank calls this."""
    acc = models.acc
    policy = models.unwrapped_policy()
    state = sharded_state_dict(acc, models.policy)
    if acc.is_main_process:
        with atomic_dir(dest) as tmp:
            save_model(merged_copy(policy) if is_peft(policy) else policy, models.tokenizer, tmp,
                       None if is_peft(policy) else state)
    acc.wait_for_everyone()


class AlarmWatch:
    """The monitor and the alarm of one RL run: ``models`` (:class:`r2m.recipes.rl.state.Models`) are the policy,
    its reference and tokenizer; ``run`` holds the run's history and checkpoints; ``world``: the run's prompts are
    the gold-reward world's (its check RM can be built)."""

    def __init__(self, cfg: Config, run: "RunDir", models: "Models", dist: "Dist", world: bool):
        self.cfg, self.models, self.dist = cfg, models, dist
        mc = self.cfg.rl.monitor
        self.enabled, self.armed = mc.enabled, mc.enabled and self.cfg.rl.stop_on_alarm
        self.alarm_cfg = mc
        self.checkpoints: Path = run.checkpoints
        # On resume, the evaluations up to the checkpoint are in the run's history already.
        self.rows: list[dict] = [dict(r) for r in run.history if EVAL_MARK in r]
        self.steps: list[int] = [int(r["step"]) for r in self.rows]
        self.alarm = first_alarm(self.rows, self.alarm_cfg) if self.rows else Alarm(None, None, ())
        self.stop_requested = False
        # A resumed run that stopped on its alarm before still names its checkpoint; a fresh one names none yet.
        self.best_path: Optional[Path] = (self.checkpoints / BEST if self.rows and (self.checkpoints / BEST).exists()
                                          else None)
        self._missing_logged: set[str] = set()
        self._drop_snapshots(after=self.steps[-1] if self.steps else -1)
        self.check_fn = None
        if self.enabled:
            self.check_fn = build_check_reward(self.cfg, world, models.tokenizer, models.device)

    @property
    def alarm_step(self) -> Optional[int]:
        """The policy step of the evaluation where the alarm fired (None: it did not)."""
        return None if self.alarm.index is None else self.steps[self.alarm.index]

    def _models(self) -> MonitorModels:
        m = self.models
        r2m_on = self.cfg.reward.source == RewardSource.MODEL and self.cfg.reward.r2m.enabled
        return MonitorModels(m.unwrapped_policy(), m.ref, m.tokenizer.pad_token_id, m.device,
                             self.cfg.eval.samples_per_prompt, self.check_fn, r2m_on,
                             min(self.cfg.eval.batch_size, 64))

    def observe(self, step: int, samples: PolicySamples, sft: PolicySamples, eval_metrics: dict) -> dict[str, float]:
        """The monitor/* metrics of the evaluation at ``step``; decides the alarm (and the stop)."""
        if not self.enabled:
            return {}
        prev = self.rows[-1] if self.rows else None
        previous = (PreviousEval(prev["eval/proxy"], prev["eval/kl"]) if prev is not None and "eval/proxy" in prev
                    else None)
        reading = monitor_signals(samples, sft, self._models(), previous)
        for key, why in reading.missing.items():
            if key not in self._missing_logged:
                self._missing_logged.add(key)
                log.info("monitor: %s not computed at step %d: %s", key, step, why)
        metrics = dict(reading.metrics)
        self.rows.append({"step": step, **eval_metrics, **metrics})
        self.steps.append(step)
        metrics["monitor/tripped"] = float(len(tripped_signals(self.rows, self.alarm_cfg)[-1]))
        fired_before = self.alarm.index is not None
        if not fired_before:
            self.alarm = first_alarm(self.rows, self.alarm_cfg)
        fires_now = not self.dist.all(fired_before or self.alarm.index is None)
        if fires_now:
            metrics["monitor/alarm"] = 1.0
            self._on_alarm()
        elif self.armed and not fired_before:
            save_policy_snapshot(self.models, self._snapshot(step))
            self._drop_snapshots(keep=self.steps[-self.alarm_cfg.patience:])
        return metrics

    def _on_alarm(self) -> None:
        log.warning("monitor: %s", describe(self.alarm, self.steps))
        if not self.armed:
            return
        self.stop_requested = True
        before = self.alarm.onset - 1
        src = self._snapshot(self.steps[before]) if before >= 0 else None
        if src is None:
            log.warning("monitor: the alarm's onset is the first counted evaluation; no checkpoint comes before it")
        elif self.models.acc.is_main_process and not src.is_dir():
            # e.g. a run resumed armed whose earlier part was not: that evaluation's policy was never saved.
            log.warning("monitor: %s was not saved (the run was not armed at step %d); no best-before-alarm", src,
                        self.steps[before])
            src = None
        elif self.models.acc.is_main_process:
            best = self.checkpoints / BEST
            if best.exists():  # an earlier run's, in this run directory
                shutil.rmtree(best)
            src.rename(best)
        self._drop_snapshots(keep=[])
        self.models.acc.wait_for_everyone()
        self.best_path = self.checkpoints / BEST if src is not None else None  # every rank names the main's copy

    def _snapshot(self, step: int) -> Path:
        return self.checkpoints / f"eval-{step:06d}"

    def _drop_snapshots(self, keep: Optional[list[int]] = None, after: Optional[int] = None) -> None:
        """Remove eval-* snapshots not in ``keep`` (or those of steps past ``after``: a resumed run's future)."""
        if not self.models.acc.is_main_process or not self.checkpoints.is_dir():
            return
        for p in self.checkpoints.glob(".tmp-eval-*"):  # the debris of an interrupted snapshot
            shutil.rmtree(p, ignore_errors=True)
        for p in self.checkpoints.iterdir():
            m = _SNAPSHOT.match(p.name)
            if m is None:
                continue
            step = int(m.group(1))
            if (keep is not None and step not in keep) or (after is not None and step > after):
                shutil.rmtree(p, ignore_errors=True)
