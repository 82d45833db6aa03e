"""TRL's ``RLOOTrainer`` doing exactly the work of one r2m RL step, for ``r2m bench speed``.

One r2m step (``prompts`` x ``k`` samples, ``epochs`` x ``minibatches`` optimiser steps) is one TRL
generation cycle: ``per_device_train_batch_size = prompts*k/minibatches`` completions per optimiser step,
``steps_per_generation = minibatches`` (one generation serves them), ``num_iterations = epochs``, no
gradient accumulation or checkpointing, fp32, KL coefficient ``beta``. TRL computes π_old's log-probs
with a forward pass (as r2m's ``rl.old_logprobs=recompute``), the reference's with another, and the
reward with the same RM r2m uses. A cycle's time is measured between the optimiser steps that close it.

TRL is the optional extra ``trl`` (``pip install trl``), imported lazily.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
from typing import Optional

import torch

from r2m.config.root import Config
from r2m.models.loading import load_policy, load_reward_model, load_tokenizer
from r2m.recipes.pipeline import read_rows, resolve_inputs
from r2m.runtime.profiling import lifetime_peak_rss_mb
from r2m.runtime.host import configure_host


def trl_available() -> bool:
    return importlib.util.find_spec("trl") is not None


def trl_version() -> Optional[str]:
    if not trl_available():
        return None
    from importlib.metadata import version

    return version("trl")


def trl_args(cfg: Config, spec, steps: int, out_dir: str):
    """The RLOOConfig of r2m's work per step; ``steps`` + 1 generation cycles (the first a warm-up)."""
    from trl import RLOOConfig  # heavy: lazy

    rl = cfg.rl
    batch = spec.prompts * spec.k
    return RLOOConfig(
        output_dir=out_dir, per_device_train_batch_size=batch // spec.minibatches, gradient_accumulation_steps=1,
        steps_per_generation=spec.minibatches, num_generations=spec.k, num_iterations=spec.epochs,
        max_completion_length=rl.max_new_tokens, temperature=rl.temperature, top_k=0, top_p=1.0, beta=spec.beta,
        learning_rate=rl.lr, max_steps=(steps + 1) * spec.minibatches * spec.epochs, lr_scheduler_type="constant",
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
        report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=cfg.run.seed,
        dataloader_num_workers=0, log_completions=False, max_grad_norm=rl.max_grad_norm,
    )


def _cycle_timer(per_cycle: int):
    """A TrainerCallback recording the time at every ``per_cycle``-th optimiser step."""
    from transformers import TrainerCallback  # heavy: lazy (TRL's dependency; already loaded by trl)

    class CycleTimer(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []
            self.mean_length: Optional[float] = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % per_cycle == 0:
                self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:  # TRL's own count: the same work as r2m's?
                self.mean_length = float(logs["completions/mean_length"])

    return CycleTimer()


def trl_arm(cfg: Config, spec, steps: int) -> dict:
    """Child: TRL's RLOOTrainer for one warm-up and ``steps`` timed cycles; seconds per cycle, peak RSS."""
    from datasets import Dataset  # heavy: lazy (TRL's dependency)
    from transformers.trainer_callback import PrinterCallback  # heavy: lazy (with TRL)
    from trl import RLOOTrainer  # heavy: lazy

    configure_host(cfg.run)  # run.threads and run.malloc, as r2m applies them: both frameworks under one host setting
    inputs = resolve_inputs(cfg)
    tok = load_tokenizer(inputs.policy, cfg.policy.trust_remote_code)
    rm_tok = load_tokenizer(inputs.reward_model, cfg.reward.trust_remote_code)
    policy = load_policy(inputs.policy, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.run.allow_unsafe_weights)
    rm = load_reward_model(inputs.reward_model, cfg.reward.dtype, cfg.reward.trust_remote_code, rm_tok.pad_token_id,
                           cfg.run.allow_unsafe_weights)
    texts = read_rows(cfg, "prompts", inputs.prompts, tok)
    timer = _cycle_timer(spec.minibatches * spec.epochs)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = RLOOTrainer(model=policy, reward_funcs=rm, args=trl_args(cfg, spec, steps, out_dir),
                              train_dataset=Dataset.from_dict({"prompt": list(texts)}), processing_class=tok,
                              reward_processing_classes=rm_tok, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # it prints TRL's log rows (disable_tqdm=True adds it)
        trainer.train()
    cycles = [b - a for a, b in zip(timer.marks, timer.marks[1:])][1:]  # the first cycle is the warm-up
    if len(cycles) != steps:
        raise RuntimeError(f"TRL ran {len(cycles) + 1} generation cycles, expected {steps + 1}")
    return {"step_s": cycles, "median_s": statistics.median(cycles), "peak_rss_mb": lifetime_peak_rss_mb(),
            "threads": torch.get_num_threads(), "trl": trl_version(), "response_length": timer.mean_length}
