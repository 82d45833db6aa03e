"""One policy-gradient loop for every algorithm (RLOO, GRPO, ReMax, REINFORCE++, PPO).

The loop alternates experience making (:mod:`r2m.experience.rollout`) and optimisation (:class:`PolicyUpdater`):

    for t in 1..T:
        exp = maker.make(prompts_t)                 # sample K per prompt, score, KL, advantages
        for epoch in 1..k: for minibatch in exp:    # clipped surrogate (R2M paper Eq. 2)
            loss = clipped_policy_loss(...) [+ beta * KL]   (micro-batches accumulate gradients)

It is built on ``accelerate.Accelerator`` so that ``accelerate launch -m r2m rl`` (or ``torchrun``)
runs data-parallel: each process samples its share of the step's prompts, K samples each, and the
statistics that must be global are (see :mod:`r2m.runtime.distributed`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch

from r2m.config import Algorithm, Config
from r2m.core.kl_control import make_kl_controller
from r2m.data.sources import display_name
from r2m.errors import ConfigError, DataError, TrainingInterrupted
from r2m.eval.policy import cap_prompts
from r2m.experience.generation import build_generator, check_generator
from r2m.experience.reward_factory import build_reward
from r2m.experience.rewards import FeedbackReward, GoldReward, WeightedRewards, is_world_prompt_set
from r2m.experience.rollout import ExperienceMaker, Shaping, hidden_store
from r2m.experience.sampling import PromptSet, tokenize_prompts
from r2m.models.critic import build_critic
from r2m.models.loading import build_policy_and_reference, load_tokenizer
from r2m.models.lora import AdapterFreeReference, enable_gradient_checkpointing
from r2m.models.reward import check_pairing, check_positions
from r2m.recipes.alarm import AlarmWatch
from r2m.recipes.pipeline import prompt_stream, read_rows, resolve_inputs
from r2m.recipes.rl.checkpoints import CheckpointMixin
from r2m.recipes.rl.evaluation import EvaluationMixin
from r2m.recipes.rl.reports import ReportMixin, RLResult
from r2m.recipes.rl.setup import PromptSampler, StreamSampler, check_data_parallel, configure_backend
from r2m.recipes.rl.step import StepMixin, bad_experience, tensor_stats  # noqa: F401 (the guard, re-exported)
from r2m.runtime.checkpoint import fingerprint, free_fields, latest_checkpoint, read_state
from r2m.runtime.distributed import Dist
from r2m.runtime.hooks import Hooks
from r2m.runtime.precision import fp32_master_weights, master_dtype
from r2m.runtime.runlog import RunDir
from r2m.updates.policy import PolicyUpdater
from r2m.updates.r2m import R2MUpdater
from r2m.updates.supervised import make_accelerator, make_lr_scheduler, progress
from r2m.utils import StopSignal, seed_everything

log = logging.getLogger("r2m")


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class RLRun(StepMixin, CheckpointMixin, EvaluationMixin, ReportMixin):
    """One RL run: setup (or resume), then ``step(t)`` T times, evaluating every ``rl.eval_every`` steps."""

    def __init__(self, cfg: Config, reward_fn=None, policy=None, extra_rewards: Sequence = (),
                 reward_weight: float = 1.0):
        """``reward_fn``: a reward function object (:class:`r2m.experience.rewards.RewardFunction`) used instead of
        the one ``cfg.reward`` builds (the object API's Python callables; then reward.source=gold loads no RM).
        ``extra_rewards``: (weight, reward function) pairs added to it, itself weighted ``reward_weight`` (TRL's
        reward_funcs and reward_weights). ``policy``: a loaded causal LM of policy.path to train in place (the
        object API's model; its reference is a copy of it as passed)."""

        self.t_start = time.perf_counter()
        self.cfg = cfg
        check_generator(cfg)  # rl.generator=vllm without vllm or CUDA: fail before building anything
        run_dir = Path(cfg.run.root) / cfg.run.name
        self.acc = make_accelerator(cfg, project_dir=str(run_dir))
        self.dist = Dist(self.acc)
        check_data_parallel(cfg.rl, self.dist.world)
        configure_backend(self.acc, cfg)
        self.inputs = resolve_inputs(cfg)  # under several processes the world cache must exist already
        seed_everything(cfg.run.seed)
        self.resume_dir = latest_checkpoint(run_dir / "checkpoints") if cfg.run.resume == "auto" else None
        if self.resume_dir is not None:
            # Another config's checkpoint is refused; a changed rl.steps, *_every, ... is logged.
            self.resume_state = read_state(self.resume_dir, fingerprint(cfg), free_fields(cfg))
        device = self.device = self.acc.device

        self.tok = load_tokenizer(self.inputs.policy, cfg.policy.trust_remote_code)
        # With policy.lora the reference is the policy's own base, adapters off (ref is None here).
        policy, ref = build_policy_and_reference(cfg.policy, self.inputs.policy, self.resume_dir and
                                                 self.resume_dir / "policy", cfg.run.allow_unsafe_weights,
                                                 resume_dtype=master_dtype(cfg.policy.dtype, self.acc), base=policy)
        fp32_master_weights(policy, "policy", self.acc)  # the reference keeps policy.dtype
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.rl.lr,
                                      weight_decay=0.0, **cfg.rl.optimizer_impl.torch_kwargs)
        self.policy, self.optimizer = self.acc.prepare(policy, optimizer)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg.rl.lr_schedule, cfg.rl.warmup_steps, cfg.rl.steps)
        self.ref = self._reference(ref)
        policy_dim = policy.config.get_text_config().hidden_size
        self.primary_reward = reward_fn or build_reward(cfg, self.inputs.reward_model, device, policy_dim)
        self.reward_fn = (WeightedRewards([(reward_weight, self.primary_reward), *extra_rewards])
                          if extra_rewards or reward_weight != 1.0 else self.primary_reward)
        self._load_prompts()
        self._check_pairing()
        self.generator = build_generator(cfg, self.inputs.policy, self.policy, self.tok, device, self.acc)
        # Inputs are valid: only now does the run directory appear (bad input leaves nothing behind).
        self.run = RunDir(cfg, self.acc, resume_step=self.resume_state["step"] if self.resume_dir else None)
        self._build_loop(device)
        self.kl_ctl = make_kl_controller(cfg.rl.beta, cfg.rl.kl_adaptive, cfg.rl.kl_target, cfg.rl.kl_horizon)
        self.sft_samples = None
        self.final_eval: dict[str, float] = {}
        self.start_step = 0
        self.bad_steps = 0
        if self.resume_dir is not None:
            self._restore(self.resume_state)
        self.watch = AlarmWatch(self)  # the over-optimisation monitor and alarm (r2m.recipes.alarm)

    def _reference(self, ref):
        """The frozen reference: ``ref``, or with LoRA the policy with its adapters off. Under mixed precision it
        runs in the policy's autocast, so that KL(pi || pi_ref) is 0 where the two agree."""
        if ref is None:
            return AdapterFreeReference(self.acc.unwrap_model(self.policy))
        ref = ref.eval().requires_grad_(False).to(self.device)
        return self.acc.prepare_model(ref, evaluation_mode=True) if self.acc.mixed_precision != "no" else ref

    def _load_prompts(self) -> None:
        cfg = self.cfg
        # No evaluation set (a user's model without data.eval_prompts): no evaluation, as TRL without eval_dataset.
        evalp = read_rows(cfg, "eval_prompts", self.inputs.eval_prompts, self.tok) if self.inputs.eval_prompts else []
        self.evalp, capped = (cap_prompts(tokenize_prompts(self.tok, evalp, cfg.data.max_prompt_tokens,
                                                           cfg.data.overlong), cfg.eval.max_prompts)
                              if evalp else (PromptSet([], [], 0, 0), 0))
        stream = prompt_stream(cfg, self.inputs.prompts, self.tok)  # None: a prompt set, read whole
        if stream is None:
            train = read_rows(cfg, "prompts", self.inputs.prompts, self.tok)
            self.train = tokenize_prompts(self.tok, train, cfg.data.max_prompt_tokens, cfg.data.overlong)
            self.sampler = PromptSampler(len(self.train.texts), cfg.run.seed, self.train)
        else:  # taken as needed; its first prompts stand for it in the checks below
            self.sampler = StreamSampler(stream, self.tok, cfg.data.max_prompt_tokens, cfg.data.overlong)
            self.train = self.sampler.peek(256)
        if not self.train.texts:
            raise DataError(f"{display_name(self.inputs.prompts)}: every prompt is longer than data.max_prompt_tokens="
                            f"{cfg.data.max_prompt_tokens} and data.overlong=skip; no prompt is left")
        if not self.evalp.texts:
            if cfg.rl.stop_on_alarm:
                raise ConfigError("rl.stop_on_alarm: needs evaluations, and no data.eval_prompts is set")
            log.info("no evaluation prompts (data.eval_prompts): the run does not evaluate")
        for name, ps in (("data.prompts", self.train), ("data.eval_prompts", self.evalp)):
            if ps.truncated or ps.skipped:
                log.warning("%s: %d prompts cut to their last data.max_prompt_tokens=%d tokens, %d skipped as longer "
                            "(data.overlong=%s)", name, ps.truncated, cfg.data.max_prompt_tokens, ps.skipped,
                            cfg.data.overlong.value)
        self.prompt_stats = {"data/prompts_truncated": self.train.truncated, "data/prompts_skipped": self.train.skipped}
        if capped:
            self.prompt_stats["data/eval_prompts_capped"] = capped
        world = is_world_prompt_set(self.train.texts[:64] + self.evalp.texts)
        self.gold_fn = GoldReward(cfg.world) if world else None

    def _check_pairing(self) -> None:
        rm = self.reward_fn.reward_model
        longest = max([len(ids) for ids in self.train.ids + self.evalp.ids] + [self.sampler.max_prompt_len]) \
            + self.cfg.rl.max_new_tokens
        check_positions(self.acc.unwrap_model(self.policy), longest, self.inputs.policy)
        if rm is not None:
            rm.read_policy(self.tok)
            check_pairing(rm, self.tok, self.train.texts[:256], longest, str(self.inputs.reward_model),
                          self.inputs.policy)

    def _build_loop(self, device: torch.device) -> None:

        cfg, r2m = self.cfg, self.cfg.reward.r2m
        store = hidden_store(r2m, cfg.policy.dtype, self.acc.mixed_precision)
        self.critic, self.critic_optimizer = self._build_critic()
        shaping = Shaping(cfg.reward.scaling, cfg.reward.normalize, cfg.reward.clip)
        self.maker = ExperienceMaker(self.policy, self.ref, self.tok, self.reward_fn, cfg.rl, device,
                                     gold_fn=self.gold_fn, hidden_store=store, critic=self.critic, shaping=shaping,
                                     dist=self.dist, generator=self.generator)
        self.updater = PolicyUpdater(self.policy, self.optimizer, self.acc, cfg.rl, self.critic, self.critic_optimizer,
                                     self.dist)
        self.rm_updater = None
        if isinstance(self.primary_reward, FeedbackReward):
            self.rm_updater = R2MUpdater(self.primary_reward, r2m, self.dist)
        # R2M "before" (Table 3): the RM as the first rollout batch left it (init=matched rescales W_o there).
        self.initial_rm_state = None

    # ------------------------------------------------------------------ checkpoints

    def _build_critic(self):
        """PPO's critic, from the reward model (head copied) or the policy (head zero), as configured."""
        if self.cfg.rl.algorithm != Algorithm.PPO:
            return None, None

        rl = self.cfg.rl
        if rl.critic_init == "reward":
            if self.inputs.reward_model is None:
                raise ConfigError("rl.critic_init: 'reward' needs a reward model; with reward.source=gold use 'policy'")
            rm_tok = load_tokenizer(self.inputs.reward_model, self.cfg.reward.trust_remote_code)
            if rm_tok.get_vocab() != self.tok.get_vocab():
                raise ConfigError(f"rl.critic_init: 'reward' needs the reward model ({self.inputs.reward_model}) "
                                  "to share "
                                  "the policy's tokenizer, since the critic reads the policy's tokens; use 'policy'")
        path = self.inputs.reward_model if rl.critic_init == "reward" else self.inputs.policy
        critic = build_critic(rl.critic_init, path, self.cfg.policy.dtype, self.cfg.policy.trust_remote_code)
        fp32_master_weights(critic, "critic", self.acc)
        if self.cfg.policy.gradient_checkpointing:
            enable_gradient_checkpointing(critic.backbone)
        opt = torch.optim.AdamW(critic.parameters(), lr=rl.critic_lr, **rl.optimizer_impl.torch_kwargs)
        return self.acc.prepare(critic, opt)


def run_rl(cfg: Config, callbacks: Sequence = (), reward_fn=None, policy=None, extra_rewards: Sequence = (),
           reward_weight: float = 1.0) -> RLResult:
    """The RL loop; resumes from the latest checkpoint with ``run.resume=auto``; SIGINT/SIGTERM stop it
    after the current step with a checkpoint. ``callbacks``: objects with ``on_step_begin(step)``,
    ``on_step_end(step, metrics)``, ``on_evaluate(step, metrics)``, ``on_save(step, path)``; one returning True
    stops the run after that step. The other arguments: :class:`RLRun`'s."""

    rl = RLRun(cfg, reward_fn, policy, extra_rewards, reward_weight)
    hooks = Hooks(callbacks)
    evaluates = bool(rl.evalp.texts)
    if rl.start_step == 0 and evaluates:
        first = rl.evaluate(0)
        rl.run.log(first, 0)
        hooks("on_evaluate", 0, first)
    bar = progress(cfg.rl.steps, "rl", cfg.run.progress)
    bar.update(rl.start_step)
    with StopSignal() as stop:
        for step in range(rl.start_step + 1, cfg.rl.steps + 1):
            hooks("on_step_begin", step)
            metrics = rl.step(step)
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in ("reward/proxy", "reward/gold", "kl")
                             if k in metrics})
            if evaluates and (step % cfg.rl.eval_every == 0 or step == cfg.rl.steps):
                evaluation = rl.evaluate(step)
                metrics.update(evaluation)
                hooks("on_evaluate", step, evaluation)
            rl.run.log(metrics, step)  # one row per step: training and (when due) evaluation metrics
            hooks("on_step_end", step, metrics)
            if cfg.rl.save_every and step % cfg.rl.save_every == 0 and step < cfg.rl.steps:
                hooks("on_save", step, str(rl.save_checkpoint(step)))
            if rl.watch.stop_requested or (hooks.stop_requested and step < cfg.rl.steps):
                # rl.stop_on_alarm (the alarm fired at this evaluation), or a callback asked to stop
                hooks("on_save", step, str(rl.save_checkpoint(step)))
                break
            # Every rank stops after the same step (a signal may reach them at different times).
            if not rl.dist.all(not stop.requested):
                path = rl.save_checkpoint(step)
                bar.close()
                rl.run.close()
                raise TrainingInterrupted(f"{stop.signal_name or 'a signal'} at step {step}: checkpoint saved to "
                                          f"{path}; "
                                          f"continue with run.resume=auto")
    bar.close()
    result = rl.finish()
    hooks("on_save", int(rl.run.history[-1]["step"]) if rl.run.history else 0, str(rl.run.checkpoints / "final"))
    return result


