"""The RL run's evaluation: the policy on the fixed prompt set every rl.eval_every steps, and R2M's Table 3
(held-out pairwise accuracy of the vanilla RM and of R2M before/after the run)."""

from __future__ import annotations

import logging
import traceback
from typing import Optional

from r2m.config.root import Config
from r2m.eval.policy import PolicySamples, sample_policy, summarize
from r2m.eval.rm_accuracy import feedback_pairwise_accuracy, vanilla_pairwise_accuracy
from r2m.recipes.alarm import AlarmWatch
from r2m.recipes.pipeline import read_rows
from r2m.recipes.rl.state import Evaluation, Models
from r2m.runtime.distributed import Dist
from r2m.runtime.runlog import RunDir
from r2m.updates.grebt import GREBTUpdater

log = logging.getLogger("r2m")

TABLE3_ERROR = "rm_accuracy_error.txt"
"""In the run directory when Table 3 failed: the error and its traceback (the run's model and metrics are complete)."""


def sample_rows(samples: PolicySamples, step: int) -> list[dict]:
    """One row per evaluation sample: prompt, completion, the run's reward, the unmodified RM's and the gold reward
    where known, and the completion's length in tokens."""
    rows = []
    for i, (prompt, completion) in enumerate(zip(samples.prompts, samples.responses)):
        row = {"step": step, "prompt": str(prompt), "completion": completion}
        for key, values in (("reward", samples.proxy), ("reward_vanilla", samples.vanilla), ("gold", samples.gold)):
            if values is not None:
                row[key] = float(values[i])
        row["length"] = int(samples.lengths[i])
        rows.append(row)
    return rows


def _samples(ev: Evaluation, cfg: Config, dist: Dist, policy, tokenizer, device, **kw) -> PolicySamples:
    """The evaluation samples of ``policy``, shared out over the ranks and gathered on each."""
    return sample_policy(policy, tokenizer, ev.prompts.texts, ev.prompts.ids, cfg.eval, cfg.rl.max_new_tokens, device,
                         dist=dist, pass_rows=cfg.rl.rollout_batch_size, **kw)


def evaluate(ev: Evaluation, models: Models, cfg: Config, dist: Dist, run: RunDir, watch: AlarmWatch,
             step: int) -> dict[str, float]:
    """The evaluation after policy step ``step`` (0: the SFT policy): its metrics, against the SFT policy's samples
    from step 1 on, with the monitor's; its samples go to ``samples/step_NNNNNN.jsonl`` and the trackers."""
    tok, device = models.tokenizer, models.device
    samples = _samples(ev, cfg, dist, models.unwrapped_policy(), tok, device, ref=models.ref, reward_fn=ev.reward_fn,
                       gold_fn=ev.gold_fn, kl_temperature=cfg.rl.temperature, step=max(step - 1, 0))
    run.log_samples(step, sample_rows(samples, step))
    if ev.sft_samples is None:
        # After a resume, the SFT policy's samples are the reference's: the evaluation seeds are fixed, so these are
        # exactly the step-0 samples.
        ev.sft_samples = samples if step == 0 else _samples(ev, cfg, dist, models.ref, tok, device, gold_fn=ev.gold_fn)
    ev.last = summarize(samples, ev.sft_samples if step > 0 else None)
    ev.last.update(watch.observe(step, samples, ev.sft_samples, ev.last))
    return ev.last


def rm_accuracy(grebt: Optional[GREBTUpdater], before: Optional[dict], models: Models, cfg: Config,
                pref_eval: str, run: RunDir) -> dict[str, float]:
    """Table 3, after the final model and metrics are written. A failure (out of memory, ...) does not fail the
    run: it is logged with its traceback, written to ``rm_accuracy_error.txt`` and recorded as
    ``rm_acc/failed = 1`` in the last metrics row; the run still exits 0."""
    if grebt is None:
        return {}
    try:
        return _table3(grebt, before, models, cfg, pref_eval)
    except Exception as e:  # noqa: BLE001  (any failure here must not lose the finished run)
        log.error("Table 3 (R2M's held-out RM accuracy) failed; the final model and metrics are saved: %s: %s",
                  type(e).__name__, e, exc_info=True)
        if models.acc.is_main_process:
            (run.path / TABLE3_ERROR).write_text("".join(traceback.format_exception(e)), encoding="utf-8")
        return {"rm_acc/failed": 1.0}


def _table3(grebt: GREBTUpdater, before: dict, models: Models, cfg: Config, pref_eval: str) -> dict[str, float]:
    """Held-out pairwise accuracy without feedback, and R2M's before/after with ω(T), ``reward.batch_size`` rows
    at a time."""
    model, rows = grebt.model, read_rows(cfg, "pref_eval", pref_eval, models.tokenizer)
    w, size = grebt.schedule.omega(cfg.rl.steps), cfg.reward.batch_size
    out = {}
    acc = vanilla_pairwise_accuracy(model, rows, size)
    out.update({"rm_acc/vanilla": acc.accuracy, "rm_acc/vanilla_gold": acc.gold_accuracy})
    # Without fusion (iterative_head) the score ignores h: before/after then compare heads only.
    trained = model.trainable_state()
    model.load_trainable_state(before)
    first = feedback_pairwise_accuracy(model, models.ref, models.tokenizer, rows, w, models.device, size)
    model.load_trainable_state(trained)
    last = feedback_pairwise_accuracy(model, models.unwrapped_policy(), models.tokenizer, rows, w, models.device,
                                      size)
    out.update({"rm_acc/r2m_before": first.accuracy, "rm_acc/r2m_before_gold": first.gold_accuracy,
                "rm_acc/r2m_after": last.accuracy, "rm_acc/r2m_after_gold": last.gold_accuracy})
    return out
