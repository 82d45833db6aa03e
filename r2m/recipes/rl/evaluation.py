"""The RL run's evaluation: the policy on the fixed prompt set every rl.eval_every steps, and R2M's Table 3
(held-out pairwise accuracy of the vanilla RM and of R2M before/after the run)."""

from __future__ import annotations

import logging
import traceback

from r2m.eval.policy import sample_policy, summarize
from r2m.eval.rm_accuracy import feedback_pairwise_accuracy, vanilla_pairwise_accuracy
from r2m.recipes.pipeline import read_rows

log = logging.getLogger("r2m")

TABLE3_ERROR = "rm_accuracy_error.txt"
"""In the run directory when Table 3 failed: the error and its traceback (the run's model and metrics are complete)."""


class EvaluationMixin:
    """Evaluation and Table 3 of :class:`r2m.recipes.rl.run.RLRun`."""

    def _samples(self, policy, **kw):
        """The evaluation samples of ``policy``, shared out over the ranks and gathered on each."""
        return sample_policy(policy, self.tok, self.evalp.texts, self.evalp.ids, self.cfg.eval,
                             self.cfg.rl.max_new_tokens, self.device, dist=self.dist,
                             pass_rows=self.cfg.rl.rollout_batch_size, **kw)

    def evaluate(self, step: int) -> dict[str, float]:
        samples = self._samples(self.acc.unwrap_model(self.policy), ref=self.ref, reward_fn=self.reward_fn,
                                gold_fn=self.gold_fn, kl_temperature=self.cfg.rl.temperature, step=max(step - 1, 0))
        self.log_samples(step, samples)  # samples/step_NNNNNN.jsonl and a tracker table (r2m.recipes.rl.reports)
        if self.sft_samples is None:
            self.sft_samples = samples if step == 0 else self._reference_samples()
        self.final_eval = summarize(samples, self.sft_samples if step > 0 else None)
        self.final_eval.update(self.watch.observe(step, samples, self.sft_samples, self.final_eval))
        return self.final_eval

    def _reference_samples(self):
        """The SFT policy's evaluation samples (after a resume): the reference is the SFT policy, and the
        evaluation seeds are fixed, so these are exactly the step-0 samples."""
        return self._samples(self.ref, gold_fn=self.gold_fn)

    def rm_accuracy(self) -> dict[str, float]:
        """Table 3, after the final model and metrics are written. A failure (out of memory, ...) does not fail the
        run: it is logged with its traceback, written to ``rm_accuracy_error.txt`` and recorded as
        ``rm_acc/failed = 1`` in the last metrics row; the run still exits 0."""
        if self.rm_updater is None:
            return {}
        try:
            return self._table3()
        except Exception as e:  # noqa: BLE001  (any failure here must not lose the finished run)
            log.error("Table 3 (R2M's held-out RM accuracy) failed; the final model and metrics are saved: %s: %s",
                      type(e).__name__, e, exc_info=True)
            if self.acc.is_main_process:
                (self.run.path / TABLE3_ERROR).write_text("".join(traceback.format_exception(e)), encoding="utf-8")
            return {"rm_acc/failed": 1.0}

    def _table3(self) -> dict[str, float]:
        """Held-out pairwise accuracy without feedback, and R2M's before/after with ω(T), ``reward.batch_size`` rows
        at a time."""
        model, rows = self.rm_updater.model, read_rows(self.cfg, "pref_eval", self.inputs.pref_eval, self.tok)
        w, size = self.reward_fn.omega(self.cfg.rl.steps), self.cfg.reward.batch_size
        out = {}
        acc = vanilla_pairwise_accuracy(model, rows, size)
        out.update({"rm_acc/vanilla": acc.accuracy, "rm_acc/vanilla_gold": acc.gold_accuracy})
        # Without fusion (iterative_head) the score ignores h: before/after then compare heads only.
        trained = model.trainable_state()
        model.load_trainable_state(self.initial_rm_state)
        before = feedback_pairwise_accuracy(model, self.ref, self.tok, rows, w, self.device, size)
        model.load_trainable_state(trained)
        after = feedback_pairwise_accuracy(model, self.acc.unwrap_model(self.policy), self.tok, rows, w, self.device,
                                           size)
        out.update({"rm_acc/r2m_before": before.accuracy, "rm_acc/r2m_before_gold": before.gold_accuracy,
                    "rm_acc/r2m_after": after.accuracy, "rm_acc/r2m_after_gold": after.gold_accuracy})
        return out
