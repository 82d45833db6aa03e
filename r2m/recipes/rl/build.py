"""Builds an RL run's parts (:func:`build_run`), or resumes them from the run's latest checkpoint.

It is built on ``accelerate.Accelerator`` so that ``accelerate launch -m r2m rl`` (or ``torchrun``) runs
data-parallel: each process samples its share of the step's prompts, K samples each, and the statistics that must be
global are (see :mod:`r2m.runtime.distributed`). Bad input is refused before the run directory appears.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

from r2m.config.enums import Algorithm, RewardSource
from r2m.config.root import Config
from r2m.data.sources import display_name
from r2m.errors import ConfigError, DataError
from r2m.eval.policy import cap_prompts
from r2m.experience.generation import build_generator, check_generator
from r2m.experience.reward_factory import Calibration, build_reward
from r2m.experience.rewards import FeedbackReward, GoldReward, WeightedRewards, is_world_prompt_set
from r2m.experience.rollout import ExperienceMaker, Shaping, hidden_store
from r2m.experience.sampling import PromptSet, tokenize_prompts
from r2m.models.critic import build_critic
from r2m.models.loading import build_policy_and_reference, load_tokenizer
from r2m.models.lora import AdapterFreeReference, enable_gradient_checkpointing
from r2m.models.reward import check_pairing, check_positions
from r2m.recipes.alarm import AlarmWatch
from r2m.recipes.pipeline import Inputs, prompt_stream, read_rows, resolve_inputs
from r2m.recipes.rl.checkpoints import holds_policy, read_resume_state, restore
from r2m.recipes.rl.setup import PromptSampler, StreamSampler, check_data_parallel, configure_backend, kl_controller
from r2m.recipes.rl.state import Evaluation, Models, RLComponents
from r2m.runtime.checkpoint import latest_checkpoint
from r2m.runtime.distributed import Dist, policy_on_meta
from r2m.runtime.precision import fp32_master_weights, master_dtype
from r2m.runtime.runlog import RunDir
from r2m.updates.grebt import GREBTUpdater
from r2m.updates.policy import PolicyUpdater
from r2m.updates.supervised import make_accelerator, make_lr_scheduler
from r2m.utils import PhaseTimer, seed_everything

log = logging.getLogger("r2m")


class Prompts(NamedTuple):
    """The run's prompts, read, tokenised and checked."""

    train: PromptSet
    """The training prompts (a stream's first ones stand for it in the checks)."""
    sampler: PromptSampler | StreamSampler
    evaluation: PromptSet
    stats: dict[str, float]
    gold_fn: Optional[GoldReward]
    """The world's gold reward, when every prompt is a world prompt."""


def build_run(cfg: Config, reward_fn=None, policy=None, extra_rewards: Sequence = (), reward_weight: float = 1.0,
              timer: Optional[PhaseTimer] = None) -> RLComponents:
    """One RL run's parts, resumed from its latest checkpoint with ``run.resume=auto``.

    ``reward_fn``: a reward function object (:class:`r2m.experience.rewards.RewardFunction`) used instead of the one
    ``cfg.reward`` builds (the object API's Python callables; then reward.source=gold loads no RM). ``extra_rewards``:
    (weight, reward function) pairs added to it, itself weighted ``reward_weight`` (TRL's reward_funcs and
    reward_weights). ``policy``: a loaded causal LM of policy.path to train in place (the object API's model; its
    reference is a copy of it as passed). ``timer``: times the step's phases (a profiler may stand in for it).
    """
    t_start = time.perf_counter()
    check_generator(cfg)  # rl.generator=vllm without vllm or CUDA: fail before building anything
    run_dir = Path(cfg.run.root) / cfg.run.name
    acc = make_accelerator(cfg, project_dir=str(run_dir))
    dist = Dist(acc)
    check_data_parallel(cfg.rl, dist.num_processes)
    configure_backend(acc, cfg)
    inputs = resolve_inputs(cfg)  # under several processes the world cache must exist already
    seed_everything(cfg.run.seed)
    resume_dir = latest_checkpoint(run_dir / "checkpoints") if cfg.run.resume == "auto" else None
    # Another config's checkpoint, or another backend's, is refused; a changed rl.steps, *_every, ... is logged.
    resume_state = read_resume_state(resume_dir, cfg, acc) if resume_dir is not None else None

    # A sharded checkpoint holds no policy/ directory: the policy loads from its path, then takes its shards.
    policy_dir = resume_dir if resume_state is not None and holds_policy(resume_dir, resume_state) else None
    models, optimizer = _policy_models(cfg, inputs, acc, policy_dir, policy)
    lr_scheduler = make_lr_scheduler(optimizer, cfg.rl.lr_schedule, cfg.rl.warmup_steps, cfg.rl.steps)
    policy_dim = models.unwrapped_policy().config.get_text_config().hidden_size
    prompts = _load_prompts(cfg, inputs, models.tokenizer)
    primary = reward_fn or build_reward(cfg, inputs.reward_model, models.device, policy_dim, inputs.reward_models,
                                        _calibration(cfg, inputs, prompts, models.tokenizer))
    reward = (WeightedRewards([(reward_weight, primary), *extra_rewards]) if extra_rewards or reward_weight != 1.0
              else primary)
    _check_pairing(cfg, inputs, models, reward, prompts)
    generator = build_generator(cfg, inputs.policy, models.policy, models.tokenizer, models.device, acc)
    # Inputs are valid: only now does the run directory appear (bad input leaves nothing behind).
    run = RunDir(cfg, acc, resume_step=resume_state["step"] if resume_state is not None else None)

    store = hidden_store(cfg.reward.r2m, cfg.policy.dtype, acc.mixed_precision)
    models.critic, critic_optimizer = _build_critic(cfg, inputs, models)
    timer = timer if timer is not None else PhaseTimer()
    maker = ExperienceMaker(models.policy, models.ref, models.tokenizer, reward, cfg.rl, models.device,
                            gold_fn=prompts.gold_fn, hidden_store=store, critic=models.critic,
                            shaping=Shaping(cfg.reward.scaling, cfg.reward.normalize, cfg.reward.clip), dist=dist,
                            generator=generator, timer=timer)
    updater = PolicyUpdater(models.policy, optimizer, acc, cfg.rl, models.critic, critic_optimizer, dist,
                            cfg.dist.sync_every_micro_batch)
    r2m = primary if isinstance(primary, FeedbackReward) else None
    grebt = GREBTUpdater(r2m.model, r2m.schedule, cfg.reward.r2m, dist, store) if r2m is not None else None
    s = RLComponents(
        cfg=cfg, inputs=inputs, dist=dist, models=models, optimizer=optimizer, lr_scheduler=lr_scheduler,
        critic_optimizer=critic_optimizer, reward_fn=reward, r2m=r2m, sampler=prompts.sampler,
        train_prompts=prompts.train, prompt_stats=prompts.stats, generator=generator, maker=maker, updater=updater,
        grebt=grebt, kl_ctl=kl_controller(cfg.rl),
        timer=timer, run=run, evaluation=Evaluation(prompts.evaluation, reward, prompts.gold_fn),
        watch=AlarmWatch(cfg, run, models, dist, world=prompts.gold_fn is not None), t_start=t_start)
    if resume_dir is not None:  # (the watch's check RM puts back the RNG states it drew from)
        restore(s.resumable, resume_dir, resume_state)
    return s


def _policy_models(cfg: Config, inputs: Inputs, acc, resume_dir: Optional[Path], policy):
    """The policy (from ``resume_dir`` when resuming) with its optimiser, prepared, and its reference."""
    tok = load_tokenizer(inputs.policy, cfg.policy.trust_remote_code)
    # With policy.lora the reference is the policy's own base, adapters off (ref is None here).
    policy, ref = build_policy_and_reference(cfg.policy, inputs.policy, resume_dir and resume_dir / "policy",
                                             cfg.run.allow_unsafe_weights,
                                             resume_dtype=master_dtype(cfg.policy.dtype, acc), base=policy,
                                             empty_policy=policy_on_meta(acc))
    fp32_master_weights(policy, "policy", acc)  # the reference keeps policy.dtype
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.rl.lr,
                                  weight_decay=0.0, **cfg.rl.optimizer_impl.torch_kwargs)
    policy, optimizer = acc.prepare(policy, optimizer)
    return Models(acc, tok, policy, _reference(acc, policy, ref)), optimizer


def _reference(acc, policy, ref):
    """The frozen reference: ``ref``, or with LoRA the policy with its adapters off. Under mixed precision it
    runs in the policy's autocast, so that KL(pi || pi_ref) is 0 where the two agree."""
    if ref is None:
        return AdapterFreeReference(acc.unwrap_model(policy))
    ref = ref.eval().requires_grad_(False).to(acc.device)
    return acc.prepare_model(ref, evaluation_mode=True) if acc.mixed_precision != "no" else ref


def _load_prompts(cfg: Config, inputs: Inputs, tok) -> Prompts:
    # No evaluation set (a user's model without data.eval_prompts): no evaluation, as TRL without eval_dataset.
    evalp = read_rows(cfg, "eval_prompts", inputs.eval_prompts, tok) if inputs.eval_prompts else []
    evalp, capped = (cap_prompts(tokenize_prompts(tok, evalp, cfg.data.max_prompt_tokens, cfg.data.overlong),
                                 cfg.eval.max_prompts) if evalp else (PromptSet([], [], 0, 0), 0))
    stream = prompt_stream(cfg, inputs.prompts, tok)  # None: a prompt set, read whole
    if stream is None:
        train = tokenize_prompts(tok, read_rows(cfg, "prompts", inputs.prompts, tok), cfg.data.max_prompt_tokens,
                                 cfg.data.overlong)
        sampler = PromptSampler(len(train.texts), cfg.run.seed, train)
    else:  # taken as needed; its first prompts stand for it in the checks below
        sampler = StreamSampler(stream, tok, cfg.data.max_prompt_tokens, cfg.data.overlong)
        train = sampler.peek(256)
    if not train.texts:
        raise DataError(f"{display_name(inputs.prompts)}: every prompt is longer than data.max_prompt_tokens="
                        f"{cfg.data.max_prompt_tokens} and data.overlong=skip; no prompt is left")
    if not evalp.texts:
        if cfg.rl.stop_on_alarm:
            raise ConfigError("rl.stop_on_alarm: needs evaluations, and no data.eval_prompts is set")
        if cfg.rl.stop_at_kl:
            raise ConfigError("rl.stop_at_kl: reads the evaluation's KL (eval/kl), and no data.eval_prompts is set")
        log.info("no evaluation prompts (data.eval_prompts): the run does not evaluate")
    for name, ps in (("data.prompts", train), ("data.eval_prompts", evalp)):
        if ps.truncated or ps.skipped:
            log.warning("%s: %d prompts cut to their last data.max_prompt_tokens=%d tokens, %d skipped as longer "
                        "(data.overlong=%s)", name, ps.truncated, cfg.data.max_prompt_tokens, ps.skipped,
                        cfg.data.overlong.value)
    stats = {"data/prompts_truncated": train.truncated, "data/prompts_skipped": train.skipped}
    if capped:
        stats["data/eval_prompts_capped"] = capped
    world = is_world_prompt_set(train.texts[:64] + evalp.texts)
    return Prompts(train, sampler, evalp, stats, GoldReward(cfg.world) if world else None)


def _calibration(cfg: Config, inputs: Inputs, prompts: Prompts, tok) -> Optional[Calibration]:
    """The rows reward.gold_mix and an RM ensemble are scaled on (None when neither is set): both responses of the
    first pairs of data.pref_eval. The gold mix needs the world's gold reward on the run's prompts and on these."""
    r = cfg.reward
    if r.source != RewardSource.MODEL or not (r.gold_mix or r.ensembled):
        return None
    what = "reward.gold_mix" if r.gold_mix else "reward.ensemble"
    if r.gold_mix and prompts.gold_fn is None:
        raise ConfigError(f"reward.gold_mix: mixes in the gold-reward world's gold, and the run's prompts "
                          f"({display_name(inputs.prompts)}) are not world prompts; set it to 0")
    if not inputs.pref_eval:
        raise ConfigError(f"{what}: scales its terms on the responses of data.pref_eval, which is not set")
    calibration = Calibration.from_pairs(read_rows(cfg, "pref_eval", inputs.pref_eval, tok),
                                         display_name(inputs.pref_eval))
    if not calibration.responses:
        raise DataError(f"{display_name(inputs.pref_eval)}: no preference pair to scale {what} on")
    if r.gold_mix and not is_world_prompt_set(calibration.prompts):
        raise ConfigError(f"reward.gold_mix: gold is scaled on data.pref_eval ({calibration.source}), whose prompts "
                          "are not world prompts")
    return calibration


def _check_pairing(cfg: Config, inputs: Inputs, models: Models, reward, prompts: Prompts) -> None:
    """The longest prompt plus rl.max_new_tokens fits the policy's positions, and the RM reads the policy's texts."""
    rm = reward.reward_model
    longest = max([len(ids) for ids in prompts.train.ids + prompts.evaluation.ids]
                  + [prompts.sampler.max_prompt_len]) + cfg.rl.max_new_tokens
    check_positions(models.unwrapped_policy(), longest, inputs.policy)
    if rm is not None:
        rm.read_policy(models.tokenizer)
        check_pairing(rm, models.tokenizer, prompts.train.texts[:256], longest, str(inputs.reward_model), inputs.policy)


def _build_critic(cfg: Config, inputs: Inputs, models: Models):
    """PPO's critic, from the reward model (head copied) or the policy (head zero), as configured."""
    if cfg.rl.algorithm != Algorithm.PPO:
        return None, None
    rl = cfg.rl
    if rl.critic_init == "reward":
        if inputs.reward_model is None:
            raise ConfigError("rl.critic_init: 'reward' needs a reward model; with reward.source=gold use 'policy'")
        rm_tok = load_tokenizer(inputs.reward_model, cfg.reward.trust_remote_code)
        if rm_tok.get_vocab() != models.tokenizer.get_vocab():
            raise ConfigError(f"rl.critic_init: 'reward' needs the reward model ({inputs.reward_model}) to share "
                              "the policy's tokenizer, since the critic reads the policy's tokens; use 'policy'")
    path = inputs.reward_model if rl.critic_init == "reward" else inputs.policy
    critic = build_critic(rl.critic_init, path, cfg.policy.dtype, cfg.policy.trust_remote_code)
    fp32_master_weights(critic, "critic", models.acc)
    if cfg.policy.gradient_checkpointing:
        enable_gradient_checkpointing(critic.backbone)
    opt = torch.optim.AdamW(critic.parameters(), lr=rl.critic_lr, **rl.optimizer_impl.torch_kwargs)
    return models.acc.prepare(critic, opt)
