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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from r2m.config import Algorithm, Config, RLConfig
from r2m.runtime.distributed import Dist, configure_deepspeed, sharded_state_dict
from r2m.experience.rollout import Experience, ExperienceMaker, HiddenStore, Shaping, experience_metrics
from r2m.experience.sampling import tokenize_prompts
from r2m.runtime.runlog import RunDir, peak, plot_curves
from r2m.errors import NumericError, TrainingInterrupted
from r2m.experience.reward_factory import build_reward
from r2m.updates.policy import PolicyUpdater
from r2m.core.kl_control import make_kl_controller
from r2m.errors import ConfigError, DataError
from r2m.eval.policy import sample_policy, summarize
from r2m.eval.rm_accuracy import feedback_pairwise_accuracy, vanilla_pairwise_accuracy
from r2m.experience.generation import build_generator, check_generator
from r2m.experience.rewards import FeedbackReward, GoldReward, is_world_prompt_set
from r2m.experience.sampling import chunk_seed
from r2m.models.critic import build_critic, load_critic, save_critic
from r2m.models.loading import build_policy_and_reference, load_tokenizer, save_model
from r2m.models.lora import AdapterFreeReference, enable_gradient_checkpointing, is_peft, merged_copy
from r2m.models.reward import check_pairing, check_positions
from r2m.recipes.pipeline import read_rows, resolve_inputs
from r2m.runtime.checkpoint import (fingerprint, free_fields, latest_checkpoint, prune, read_state, rng_state,
                                    set_rng_state, step_dir, write_state)
from r2m.runtime.safeio import load_safetensors as load_file
from r2m.updates.r2m import R2MUpdater
from r2m.updates.supervised import make_accelerator, make_lr_scheduler, progress, set_threads
from r2m.utils import StopSignal, seed_everything, torch_dtype
from r2m.fileio import atomic_dir

log = logging.getLogger("r2m")


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


class PromptSampler:
    """Walks the prompt set in shuffled passes; ``position`` is the number of prompts consumed."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.position = n, seed, 0

    def _order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))

    def next(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            epoch, offset = divmod(self.position, self.n)
            take = min(count - len(out), self.n - offset)
            out += self._order(epoch)[offset: offset + take].tolist()
            self.position += take
        return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


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


def check_data_parallel(rl: RLConfig, world: int) -> None:
    """The step's batch must split evenly over ``world`` processes, down to micro-batches."""
    if world == 1:
        return
    if rl.prompts_per_step % world:
        raise ConfigError(f"rl.prompts_per_step: expected a multiple of the {world} processes (each samples an equal "
                          f"share, K samples per prompt), got {rl.prompts_per_step}")
    local = rl.prompts_per_step // world * rl.k
    if local % rl.minibatches:
        raise ConfigError(f"rl.minibatches: expected a divisor of each process's batch prompts_per_step/{world}*k="
                          f"{local}, got {rl.minibatches}")
    if rl.micro_batch_size and (local // rl.minibatches) % rl.micro_batch_size:
        raise ConfigError(f"rl.micro_batch_size: expected a divisor of each process's minibatch "
                          f"{local // rl.minibatches}, got {rl.micro_batch_size}")
    if rl.rollout_chunks % world:
        raise ConfigError(f"rl.rollout_chunks: expected 0 or a multiple of the {world} processes, got "
                          f"{rl.rollout_chunks}")


def configure_backend(acc, cfg: Config) -> None:
    """Check and complete a DeepSpeed setup for the RL loop (nothing to do for DDP and FSDP).

    DeepSpeed takes its optimiser step inside ``accelerator.backward``, so one backward must be one
    optimiser step: no micro-batching. Its micro-batch size is this process's minibatch (accelerate
    cannot infer it: r2m prepares no DataLoader), and it clips at ``rl.max_grad_norm``. ZeRO-3 would
    partition the reference and reward model as they load, and one DeepSpeed engine per Accelerator
    leaves no room for PPO's critic: both are refused, with FSDP as the way out. Under FSDP and
    DeepSpeed, resuming and LoRA are refused (rank 0 alone writes checkpoints; the final merge would copy
    a sharded model); fp16 with PPO is refused (one gradient scaler, two optimisers).
    """
    rl = cfg.rl
    from accelerate.utils import DistributedType


    sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded and cfg.run.resume == "auto":
        raise ConfigError(f"run.resume=auto under {acc.distributed_type.value}: r2m's checkpoints hold rank 0's optimiser "
                          "shard only, so a sharded run cannot resume yet; resume under DDP (one process or many), "
                          "or start a new run.name (checkpoints/*/policy hold the full policy weights)")
    if sharded and cfg.policy.lora.enabled:
        raise ConfigError(f"policy.lora.enabled under {acc.distributed_type.value} is not supported yet (the final "
                          "merge copies the sharded model); LoRA fits in DDP: use configs/accelerate/ddp.yaml")
    if acc.mixed_precision == "fp16" and rl.algorithm == Algorithm.PPO:
        raise ConfigError("run.mixed_precision: fp16 with rl.algorithm=ppo is not supported (two optimisers under one "
                          "gradient scaler); use bf16")
    if acc.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = acc.state.deepspeed_plugin
    fsdp = "use configs/accelerate/fsdp.yaml (FSDP) instead"
    if plugin.zero_stage == 3:
        raise ConfigError(f"DeepSpeed ZeRO-3 is not supported by `r2m rl` (the frozen reference and reward model "
                          f"would be partitioned at load); {fsdp}, or ZeRO-2")
    if rl.algorithm == Algorithm.PPO:
        raise ConfigError(f"rl.algorithm=ppo under DeepSpeed: the critic would need a second engine; {fsdp}, or DDP")
    local_minibatch = rl.prompts_per_step * rl.k // acc.num_processes // rl.minibatches
    if rl.micro_batch_size not in (0, local_minibatch):
        raise ConfigError(f"rl.micro_batch_size: expected 0 (or the per-process minibatch, {local_minibatch}) under "
                          f"DeepSpeed (its optimiser steps on every backward), got {rl.micro_batch_size}; lower memory "
                          "with rl.minibatches instead")
    configure_deepspeed(acc, local_minibatch, rl.max_grad_norm)


def tensor_stats(name: str, x: torch.Tensor) -> dict[str, float]:
    """NaN/inf counts and the range of the finite values: what the numeric guard logs."""
    finite = x[torch.isfinite(x)]
    return {f"guard/{name}_nan": torch.isnan(x).sum().item(), f"guard/{name}_inf": torch.isinf(x).sum().item(),
            f"guard/{name}_min": finite.min().item() if finite.numel() else float("nan"),
            f"guard/{name}_max": finite.max().item() if finite.numel() else float("nan")}


def bad_experience(exp: Experience) -> dict[str, float]:
    """Stats of every non-finite tensor the update would consume (empty when all are finite)."""
    out: dict[str, float] = {}
    for name in ("scores", "advantages", "old_logprobs", "ref_logprobs", "values"):
        x = getattr(exp, name)
        if x is not None and not torch.isfinite(x).all():
            out.update(tensor_stats(name, x))
    return out


class RLRun:
    """One RL run: setup (or resume), then ``step(t)`` T times, evaluating every ``rl.eval_every`` steps."""

    def __init__(self, cfg: Config):

        self.t_start = time.perf_counter()
        self.cfg = cfg
        set_threads(cfg)
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
                                                 self.resume_dir / "policy", cfg.run.allow_unsafe_weights)
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.rl.lr,
                                      weight_decay=0.0)
        self.policy, self.optimizer = self.acc.prepare(policy, optimizer)
        self.lr_scheduler = make_lr_scheduler(self.optimizer, cfg.rl.lr_schedule, cfg.rl.warmup_steps, cfg.rl.steps)
        self.ref = self._reference(ref)
        policy_dim = policy.config.get_text_config().hidden_size
        self.reward_fn = build_reward(cfg, self.inputs.reward_model, device, policy_dim)
        self._load_prompts()
        self._check_pairing()
        self.generator = build_generator(cfg, self.inputs.policy, self.policy, self.tok, device, self.acc)
        # Inputs are valid: only now does the run directory appear (bad input leaves nothing behind).
        self.run = RunDir(cfg, self.acc, resume_step=self.resume_state["step"] if self.resume_dir else None)
        self._build_loop(device)
        self.kl_ctl = make_kl_controller(cfg.rl.beta, cfg.rl.kl_adaptive, cfg.rl.kl_target, cfg.rl.kl_horizon)
        self.sampler = PromptSampler(len(self.train.texts), cfg.run.seed)
        self.sft_samples = None
        self.final_eval: dict[str, float] = {}
        self.start_step = 0
        self.bad_steps = 0
        if self.resume_dir is not None:
            self._restore(self.resume_state)

    def _reference(self, ref):
        """The frozen reference: ``ref``, or with LoRA the policy with its adapters off. Under mixed precision it
        runs in the policy's autocast, so that KL(pi || pi_ref) is 0 where the two agree."""
        if ref is None:
            return AdapterFreeReference(self.acc.unwrap_model(self.policy))
        ref = ref.eval().requires_grad_(False).to(self.device)
        return self.acc.prepare_model(ref, evaluation_mode=True) if self.acc.mixed_precision != "no" else ref

    def _load_prompts(self) -> None:
        cfg = self.cfg
        train = read_rows(cfg, "prompts", self.inputs.prompts, self.tok)
        evalp = read_rows(cfg, "eval_prompts", self.inputs.eval_prompts, self.tok)
        self.train = tokenize_prompts(self.tok, train, cfg.data.max_prompt_tokens, cfg.data.overlong)
        self.evalp = tokenize_prompts(self.tok, evalp, cfg.data.max_prompt_tokens, cfg.data.overlong)
        if not self.train.texts:
            raise DataError(f"{self.inputs.prompts}: every prompt is longer than data.max_prompt_tokens="
                            f"{cfg.data.max_prompt_tokens} and data.overlong=skip; no prompt is left")
        self.prompt_stats = {"data/prompts_truncated": self.train.truncated, "data/prompts_skipped": self.train.skipped}
        world = is_world_prompt_set(self.train.texts[:64] + self.evalp.texts)
        self.gold_fn = GoldReward(cfg.world) if world else None

    def _check_pairing(self) -> None:
        rm = self.reward_fn.reward_model
        longest = max(len(ids) for ids in self.train.ids + self.evalp.ids) + self.cfg.rl.max_new_tokens
        check_positions(self.acc.unwrap_model(self.policy), longest, self.inputs.policy)
        if rm is not None:
            rm.read_policy(self.tok)
            check_pairing(rm, self.tok, self.train.texts[:256], longest, str(self.inputs.reward_model),
                          self.inputs.policy)

    def _build_loop(self, device: torch.device) -> None:

        cfg, r2m = self.cfg, self.cfg.reward.r2m
        store = HiddenStore(torch.device("cpu") if r2m.hidden_device == "cpu" else None, torch_dtype(r2m.hidden_dtype))
        self.critic, self.critic_optimizer = self._build_critic()
        shaping = Shaping(cfg.reward.scaling, cfg.reward.normalize, cfg.reward.clip)
        self.maker = ExperienceMaker(self.policy, self.ref, self.tok, self.reward_fn, cfg.rl, device,
                                     gold_fn=self.gold_fn, hidden_store=store, critic=self.critic, shaping=shaping,
                                     dist=self.dist, generator=self.generator)
        self.updater = PolicyUpdater(self.policy, self.optimizer, self.acc, cfg.rl, self.critic, self.critic_optimizer,
                                     self.dist)
        self.rm_updater = None
        if isinstance(self.reward_fn, FeedbackReward):
            self.rm_updater = R2MUpdater(self.reward_fn, r2m, self.dist)
        # R2M "before" (Table 3): the RM as the first rollout batch left it (init=matched rescales W_o there).
        self.initial_rm_state = None

    # ------------------------------------------------------------------ checkpoints

    def training_state(self, step: int) -> dict:
        state = {"step": step, "sampler_position": self.sampler.position, "rng": rng_state(),
                 "optimizer": self.optimizer.state_dict(), "kl_ctl": self.kl_ctl.state_dict(),
                 "bad_steps": self.bad_steps, "omega_step": step}
        if self.maker.moments is not None:
            state["moments"] = self.maker.moments.state_dict()
        if self.critic_optimizer is not None:
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.rm_updater is not None:
            state["r2m_optimizer"] = self.rm_updater.optimizer.state_dict()
            state["r2m_initial"] = self.initial_rm_state
        return state

    def save_checkpoint(self, step: int) -> Path:
        """Everything needed to continue at step + 1, written atomically; older ones pruned."""

        final = step_dir(self.run.checkpoints, step)
        policy_state = sharded_state_dict(self.acc, self.policy)  # every rank takes part in gathering a sharded policy
        if self.acc.is_main_process:
            with atomic_dir(final) as tmp:
                save_model(self.acc.unwrap_model(self.policy), self.tok, tmp / "policy", policy_state)
                if self.rm_updater is not None:
                    self.rm_updater.model.save(tmp / "r2m", base_rm=str(self.inputs.reward_model))
                if self.critic is not None:
                    save_critic(self.acc.unwrap_model(self.critic), tmp / "critic")
                write_state(tmp, self.training_state(step), step, fingerprint(self.cfg), free_fields(self.cfg))
            prune(self.run.checkpoints, self.cfg.run.keep_checkpoints)
        self.acc.wait_for_everyone()
        return final

    def _restore(self, state: dict) -> None:
        d = self.resume_dir
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.sampler.position = state["sampler_position"]
        self.bad_steps = state["bad_steps"]
        if "moments" in state:
            self.maker.moments.load_state_dict(state["moments"])
        if self.critic is not None:
            self.acc.unwrap_model(self.critic).load_state_dict(load_critic(d / "critic").state_dict())
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        if self.rm_updater is not None:
            self.rm_updater.model.load_trainable_state(load_file(str(d / "r2m" / "r2m.safetensors")))
            self.rm_updater.optimizer.load_state_dict(state["r2m_optimizer"])
            self.initial_rm_state = state["r2m_initial"]
        self.start_step = state["step"]
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", d, self.start_step)

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
                raise ConfigError(f"rl.critic_init: 'reward' needs the reward model ({self.inputs.reward_model}) to share "
                                  "the policy's tokenizer, since the critic reads the policy's tokens; use 'policy'")
        path = self.inputs.reward_model if rl.critic_init == "reward" else self.inputs.policy
        critic = build_critic(rl.critic_init, path, self.cfg.policy.dtype, self.cfg.policy.trust_remote_code)
        if self.cfg.policy.gradient_checkpointing:
            enable_gradient_checkpointing(critic.backbone)
        opt = torch.optim.AdamW(critic.parameters(), lr=rl.critic_lr)
        return self.acc.prepare(critic, opt)

    def evaluate(self, step: int) -> dict[str, float]:
        samples = sample_policy(self.acc.unwrap_model(self.policy), self.tok, self.evalp.texts, self.evalp.ids,
                                self.cfg.eval, self.cfg.rl.max_new_tokens, self.device, ref=self.ref,
                                reward_fn=self.reward_fn, gold_fn=self.gold_fn, kl_temperature=self.cfg.rl.temperature,
                                step=max(step - 1, 0))
        if self.sft_samples is None:
            self.sft_samples = samples if step == 0 else self._reference_samples()
        self.final_eval = summarize(samples, self.sft_samples if step > 0 else None)
        return self.final_eval

    def _reference_samples(self):
        """The SFT policy's evaluation samples (after a resume): the reference is the SFT policy, and the
        evaluation seed is fixed, so these are exactly the step-0 samples."""
        return sample_policy(self.ref, self.tok, self.evalp.texts, self.evalp.ids, self.cfg.eval,
                             self.cfg.rl.max_new_tokens, self.device, gold_fn=self.gold_fn)

    def _chunk_seeds(self, step: int) -> Optional[list[int]]:
        """rl.rollout_chunks: the seeds of this rank's chunks (global chunk indices, so any N agrees).

        With rollout_chunks=0 one process samples from its RNG stream; several processes, whose streams
        start equal (one run.seed), each get a seed of their own rank instead."""
        chunks = self.cfg.rl.rollout_chunks
        if not chunks:
            return [chunk_seed(self.cfg.run.seed, step, 10**6 + self.dist.rank)] if self.dist.enabled else None
        return [chunk_seed(self.cfg.run.seed, step, c) for c in self.dist.shard(range(chunks))]

    def step(self, step: int) -> dict[str, float]:
        """Policy step ``step`` (1-based); R2M's round is t = step - 1."""
        cfg = self.cfg
        # The global batch (the same on every rank), then this rank's contiguous share: a prompt's K
        # samples are made on one rank, so group advantages and R2M's per-group loss stay local.
        idx = self.dist.shard(self.sampler.next(cfg.rl.prompts_per_step))
        t0 = time.perf_counter()
        beta = self.kl_ctl.value
        exp = self.maker.make([self.train.texts[i] for i in idx], [self.train.ids[i] for i in idx], step=step - 1,
                              beta=beta, seeds=self._chunk_seeds(step))
        t1 = time.perf_counter()
        if self.rm_updater is not None and self.initial_rm_state is None:
            self.initial_rm_state = self.rm_updater.model.trainable_state()
        bad = bad_experience(exp)
        if not self.dist.all(not bad):
            return self._skip(step, bad or {"guard/other_rank": 1.0}, exp)
        stats = {"policy/lr": self.optimizer.param_groups[0]["lr"], **self.updater.update(exp, beta)}
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.generator.sync_weights(self.acc.unwrap_model(self.policy))  # vLLM: push the new weights; hf: nothing
        t2 = time.perf_counter()
        if self.rm_updater is not None:
            stats.update(self.rm_updater.update(exp))
        t3 = time.perf_counter()
        self.bad_steps = self.bad_steps + 1 if stats.get("guard/skipped_minibatches", 0) == cfg.rl.epochs * \
            cfg.rl.minibatches else 0
        timing = {f"time/{k}": v for k, v in self.maker.timer.pop().items()}
        metrics = {**experience_metrics(exp, self.dist), **stats, **timing, "time/update": t2 - t1,
                   "time/rm_update": t3 - t2, "time/step": t3 - t0, "prompts/seen": self.sampler.position,
                   "kl/beta": beta}
        self.kl_ctl.update(metrics["kl/seq_sum"], exp.batch_size * self.dist.world)
        if exp.policy_hidden is not None:
            metrics["r2m/hidden_mb"] = exp.policy_hidden.numel() * exp.policy_hidden.element_size() / 2**20
        if step == 1:
            metrics.update(self.prompt_stats)
        if self.reward_fn.reward_model is not None:  # RM inputs cut at reward.max_length since the last step
            metrics["data/rm_truncated"] = self.reward_fn.reward_model.pop_truncated()
        self._check_bad_steps(step)
        return metrics

    def _skip(self, step: int, bad: dict[str, float], exp: Experience) -> dict[str, float]:
        """A step whose experience holds NaN/inf: no update, its stats logged, and a count towards the stop."""
        self.bad_steps += 1
        log.warning("step %d skipped: non-finite values in the experience: %s", step, bad)
        metrics = {**bad, "guard/skipped_step": 1.0, "guard/bad_steps": self.bad_steps,
                   "prompts/seen": self.sampler.position, "kl/beta": self.kl_ctl.value}
        self.maker.timer.pop()
        self._check_bad_steps(step, metrics)
        return metrics

    def _check_bad_steps(self, step: int, metrics: Optional[dict] = None) -> None:
        if self.bad_steps < self.cfg.run.max_bad_steps:
            return
        if metrics is not None:
            self.run.log(metrics, step)
        path = self.save_checkpoint(step)
        raise NumericError(f"{self.bad_steps} consecutive steps with NaN/inf rewards, advantages, losses or gradients "
                           f"(run.max_bad_steps={self.cfg.run.max_bad_steps}) at step {step}; stopped with a checkpoint "
                           f"in {path}. See guard/* in {self.run.metrics_path}.")

    def rm_accuracy(self) -> dict[str, float]:
        """Table 3: held-out pairwise accuracy without feedback, and R2M's before/after with ω(T)."""
        if self.rm_updater is None:
            return {}
        model, rows = self.rm_updater.model, read_rows(self.cfg, "pref_eval", self.inputs.pref_eval, self.tok)
        w = self.reward_fn.omega(self.cfg.rl.steps)
        out = {}
        acc = vanilla_pairwise_accuracy(model, rows)
        out.update({"rm_acc/vanilla": acc.accuracy, "rm_acc/vanilla_gold": acc.gold_accuracy})
        # Without fusion (iterative_head) the score ignores h: before/after then compare heads only.
        trained = model.trainable_state()
        model.load_trainable_state(self.initial_rm_state)
        before = feedback_pairwise_accuracy(model, self.ref, self.tok, rows, w, self.device)
        model.load_trainable_state(trained)
        after = feedback_pairwise_accuracy(model, self.acc.unwrap_model(self.policy), self.tok, rows, w, self.device)
        out.update({"rm_acc/r2m_before": before.accuracy, "rm_acc/r2m_before_gold": before.gold_accuracy,
                    "rm_acc/r2m_after": after.accuracy, "rm_acc/r2m_after_gold": after.gold_accuracy})
        return out

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
                        time.perf_counter() - self.t_start, rm_acc)


def run_rl(cfg: Config) -> RLResult:
    """The RL loop; resumes from the latest checkpoint with ``run.resume=auto``; SIGINT/SIGTERM stop it
    after the current step with a checkpoint."""

    rl = RLRun(cfg)
    if rl.start_step == 0:
        rl.run.log(rl.evaluate(0), 0)
    bar = progress(cfg.rl.steps, "rl", cfg.run.progress)
    bar.update(rl.start_step)
    with StopSignal() as stop:
        for step in range(rl.start_step + 1, cfg.rl.steps + 1):
            metrics = rl.step(step)
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in ("reward/proxy", "reward/gold", "kl")
                             if k in metrics})
            if step % cfg.rl.eval_every == 0 or step == cfg.rl.steps:
                metrics.update(rl.evaluate(step))
            rl.run.log(metrics, step)  # one row per step: training and (when due) evaluation metrics
            if cfg.rl.save_every and step % cfg.rl.save_every == 0 and step < cfg.rl.steps:
                rl.save_checkpoint(step)
            # Every rank stops after the same step (a signal may reach them at different times).
            if not rl.dist.all(not stop.requested):
                path = rl.save_checkpoint(step)
                bar.close()
                rl.run.close()
                raise TrainingInterrupted(f"{stop.signal_name or 'a signal'} at step {step}: checkpoint saved to {path}; "
                                          f"continue with run.resume=auto")
    bar.close()
    return rl.finish()


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
