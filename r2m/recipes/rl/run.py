"""One policy-gradient loop for every algorithm (RLOO, GRPO, ReMax, REINFORCE++, PPO), R2M included:

    s = build_run(cfg)                        # the run's parts (r2m/recipes/rl/build.py), resumed when asked
    for step in 1..T:
        metrics = train_step(s, step)         # one step (r2m/recipes/rl/step.py)
        every rl.eval_every: evaluate         # the policy on the fixed prompts, the alarm (evaluation.py)
        every rl.save_every: save_checkpoint  # (checkpoints.py)
    finish                                    # final models, Table 3, plots (reports.py)
"""

from __future__ import annotations

from typing import Sequence

from r2m.config.root import Config
from r2m.errors import TrainingInterrupted
from r2m.recipes.rl.build import build_run
from r2m.recipes.rl.checkpoints import save_checkpoint
from r2m.recipes.rl.evaluation import evaluate
from r2m.recipes.rl.reports import RLResult, finish
from r2m.recipes.rl.state import RLComponents
from r2m.recipes.rl.step import train_step
from r2m.runtime.hooks import Hooks
from r2m.updates.supervised import progress
from r2m.utils import StopSignal


def run_rl(cfg: Config, callbacks: Sequence = (), reward_fn=None, policy=None, extra_rewards: Sequence = (),
           reward_weight: float = 1.0) -> RLResult:
    """The RL loop; resumes from the latest checkpoint with ``run.resume=auto``; SIGINT/SIGTERM stop it
    after the current step with a checkpoint. ``callbacks``: objects with ``on_step_begin(step)``,
    ``on_step_end(step, metrics)``, ``on_evaluate(step, metrics)``, ``on_save(step, path)``; one returning True
    stops the run after that step. The other arguments: :func:`r2m.recipes.rl.build.build_run`'s."""
    s = build_run(cfg, reward_fn, policy, extra_rewards, reward_weight)
    hooks = Hooks(callbacks)
    if s.progress.start_step == 0 and s.evaluation.enabled:
        first = run_evaluation(s, 0)
        s.run.log(first, 0)
        hooks("on_evaluate", 0, first)
    bar = progress(cfg.rl.steps, "rl", cfg.run.progress)
    bar.update(s.progress.start_step)
    with StopSignal() as stop:
        for step in range(s.progress.start_step + 1, cfg.rl.steps + 1):
            hooks("on_step_begin", step)
            metrics = train_step(s, step)
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in ("reward/proxy", "reward/gold", "kl")
                             if k in metrics})
            if s.evaluation.enabled and (step % cfg.rl.eval_every == 0 or step == cfg.rl.steps):
                evaluation = run_evaluation(s, step)
                metrics.update(evaluation)
                hooks("on_evaluate", step, evaluation)
            s.run.log(metrics, step)  # one row per step: training and (when due) evaluation metrics
            hooks("on_step_end", step, metrics)
            if cfg.rl.save_every and step % cfg.rl.save_every == 0 and step < cfg.rl.steps:
                hooks("on_save", step, str(save_checkpoint(s.resumable, cfg, s.run, step)))
            if s.watch.stop_requested or (hooks.stop_requested and step < cfg.rl.steps):
                # rl.stop_on_alarm (the alarm fired at this evaluation), or a callback asked to stop
                hooks("on_save", step, str(save_checkpoint(s.resumable, cfg, s.run, step)))
                break
            # Every rank stops after the same step (a signal may reach them at different times).
            if not s.dist.all(not stop.requested):
                path = save_checkpoint(s.resumable, cfg, s.run, step)
                bar.close()
                s.run.close()
                raise TrainingInterrupted(f"{stop.signal_name or 'a signal'} at step {step}: checkpoint saved to "
                                          f"{path}; continue with run.resume=auto")
    bar.close()
    result = finish_run(s)
    hooks("on_save", int(s.run.history[-1]["step"]) if s.run.history else 0, str(s.run.checkpoints / "final"))
    return result


def run_evaluation(s: RLComponents, step: int) -> dict[str, float]:
    """:func:`evaluate` on the run's parts."""
    return evaluate(s.evaluation, s.models, s.cfg, s.dist, s.run, s.watch, step)


def finish_run(s: RLComponents) -> RLResult:
    """:func:`finish` on the run's parts."""
    return finish(s.resumable, s.cfg, s.inputs, s.run, s.evaluation.last, s.watch, s.t_start)
