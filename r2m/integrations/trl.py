"""R2M inside TRL's ``GRPOTrainer`` and ``RLOOTrainer`` (tested with TRL >=1.16,<1.17: ``pip install 'r2m[trl]'``).

    reward = R2MReward.from_base(rm_path, policy, tokenizer, R2MConfig(enabled=True))
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], callbacks=[R2MCallback(reward)], ...)

:class:`R2MReward` is a TRL reward function, ``(prompts, completions, **kwargs) -> list[float]``,
returning r_φ(x, y, h) (R2M paper Eq. 3-4). :class:`R2MCallback` runs the GREBT update (the one of
:mod:`r2m.updates.grebt`, Algorithm 1 lines 15-20) after each optimiser step on the training groups the
reward function scored during that step, saves the fusion module and head with each checkpoint and
into ``output_dir/r2m`` (what ``trainer.save_model()`` writes and ``trainer.push_to_hub()`` uploads),
and restores them on resume.

Which groups the update reads: TRL scores a generation batch once and may train on it over several
optimiser steps (``steps_per_generation > 1``, ``num_iterations > 1``); evaluation scores its own
batches between steps. A reward call keeps its groups for the update only when it scores a training
batch: inside an optimiser step (between the callback's ``on_step_begin`` and ``on_step_end``) with the
policy in training mode (TRL's own test, ``self.model.training``). Each step's update reads every
training group scored during that step, once (two generation batches when ``gradient_accumulation_steps``
exceeds ``steps_per_generation``); a step that reuses a buffered batch updates nothing. The update reads
only what scoring stored (H_last, h, t), and the next batch is scored after it either way, so updating
after the first step on a batch gives the RM the same trajectory as after its last, and a checkpoint
between them already holds the update.

Where this differs from r2m's own loop (:mod:`r2m.recipes.rl`):

- **h costs one extra forward.** TRL gives reward functions texts and completion ids, not hidden states,
  so the reward runs one no-grad forward of the policy over the prompt's tokens (as TRL tokenises it:
  :mod:`r2m.integrations.trl_batch`) and the sampled completion ids, per generation batch. r2m's loop
  takes h from the log-prob pass it makes anyway. Its measured cost is in docs/TRL.md.
- **The update reads the scoring h.** r2m's loop refreshes h during the last policy epoch; here the
  update reads the h of the policy that sampled (equal when ``num_iterations=1`` and one optimiser step
  per generation batch, up to the minibatch steps taken within it).
- **ω(t)**: t is ``state.global_step`` when the batch was scored, T is ``state.max_steps``.
- **Processes**: every process must hold whole groups of ``num_generations`` (TRL shards a generation
  batch over processes in contiguous slices of ``per_device_train_batch_size × steps_per_generation``);
  a launch where a group would be split is refused before the first step. The fusion and head are
  trained outside DDP with their gradients averaged over processes, as in r2m's loop.
- **Metrics**: the update's ``r2m/*`` statistics join TRL's log of the same step (this reaches into
  the trainers' ``_metrics``, one reason for the pinned TRL range); ``R2MCallback.history`` keeps them all.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from transformers import TrainerCallback

from r2m.config.enums import PairChoice
from r2m.config.models import R2MConfig
from r2m.errors import CheckpointError, ConfigError
from r2m.experience.rewards import FeedbackReward, RewardQuery
from r2m.integrations.trl_batch import R2MBatch, merge, read_rows
from r2m.models.feedback import Feedback, sequence_feedback
from r2m.models.forward import eval_mode
from r2m.models.loading import load_reward_model, load_tokenizer
from r2m.models.r2m import FeedbackRewardModel, build_feedback_rm
from r2m.models.r2m_hub import check_format, hub_id_of
from r2m.models.reward import RewardModel
from r2m.runtime.checkpoint import load_state_file
from r2m.runtime.distributed import Dist
from r2m.runtime.safeio import load_safetensors, read_json
from r2m.updates.grebt import GREBTUpdater

log = logging.getLogger("r2m")

TESTED_TRL = (">=1.16", "<1.17")
R2M_DIR = "r2m"
"""The fusion module and head inside each ``checkpoint-N/`` and ``output_dir`` (a ``save_pretrained`` directory)."""
OPTIMIZER_FILE = "r2m_trainer_state.pt"
"""Inside ``checkpoint-N/r2m/``: the RM optimiser's state and init=matched's calibration factor."""


def trl_version() -> str:
    """The installed TRL's version; a clear error when TRL is missing."""
    try:
        version = metadata.version("trl")
    except metadata.PackageNotFoundError:
        raise ImportError("r2m.integrations.trl needs TRL: pip install 'r2m[trl]' "
                          f"(tested: trl{','.join(TESTED_TRL)})") from None
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    if major_minor != (1, 16):
        log.warning("r2m.integrations.trl: TRL %s is installed; the tested range is trl%s", version, ",".join(TESTED_TRL))
    return version


def check_groups(prompts: Sequence[Any], k: int) -> None:
    """Rows must be whole, consecutive groups of ``k`` completions of one prompt (TRL's RepeatSampler order)."""
    if len(prompts) % k:
        raise ConfigError(f"R2MReward: {len(prompts)} completions on this process, not a multiple of "
                          f"num_generations={k}: a group is split across processes")
    for i in range(0, len(prompts), k):
        if any(p != prompts[i] for p in prompts[i: i + k]):
            raise ConfigError(f"R2MReward: rows {i}..{i + k - 1} are not {k} completions of one prompt; R2M's "
                              "GREBT update needs whole groups of num_generations consecutive rows")


def refuse_tools(log_metric, kwargs: dict) -> None:
    """Tool calling and environments are refused: the policy reads prompts rendered with tool schemas and
    completions holding tool turns, which R2M's h and the RM's single assistant reply would not see."""
    trainer = getattr(log_metric, "__self__", None)  # TRL passes its own bound _log_metric
    if getattr(trainer, "tools", None) or kwargs.get("environments") is not None:
        raise ConfigError("R2MReward: the trainer uses tools or environments (tool calling); R2M scores one "
                          "assistant reply to the prompt and takes h on the policy's prompt and completion tokens, "
                          "so tool-calling runs are not supported")


class R2MReward:
    """A TRL reward function: r_φ(x, y, h) with h from an extra no-grad forward of the trainer's policy.

    Prompts and completions may be text or chat messages (a conversational dataset): the RM reads the
    conversation through its own chat template, h is taken on the policy's own tokens
    (:mod:`r2m.integrations.trl_batch`).
    """

    def __init__(self, model: FeedbackRewardModel, policy_tokenizer, cfg: R2MConfig = R2MConfig(enabled=True),
                 policy: Optional[torch.nn.Module] = None, batch_size: int = 256, seed: int = 0, name: str = "r2m"):
        trl_version()
        if cfg.pair_choice is PairChoice.GOLD:
            raise ConfigError("R2MReward: pair_choice=gold needs the gold-reward world's gold reward, which a TRL "
                              "run does not have; use pair_choice=self (the paper) or random")
        self.model, self.tokenizer, self.cfg, self.policy = model, policy_tokenizer, cfg, policy
        model.rm.read_policy(policy_tokenizer)  # a chat reply drops the policy's <eos> text: the RM's template ends it
        self.reward = FeedbackReward(model, cfg, total_steps=1, batch_size=batch_size, seed=seed)
        self.num_generations: Optional[int] = None
        """Set by :class:`R2MCallback` from the trainer's args."""
        self.chat_template_kwargs: dict = {}
        """The trainer's ``chat_template_kwargs`` (set by :class:`R2MCallback`): the policy's prompts render with them."""
        self.in_step = False
        """True between the callback's ``on_step_begin`` and ``on_step_end``: calls then score training batches."""
        self.pending: list[R2MBatch] = []
        """The training groups scored during the current optimiser step, until the callback's update takes them."""
        self.log_metric = None
        """TRL's ``log_metric`` of the last call (the callback logs through its trainer)."""
        self.feedback_rows = 0
        """Sequences that went through the extra forward pass (for cost accounting)."""
        self.__name__ = name  # TRL names a reward function's metrics after it: rewards/r2m/mean

    @classmethod
    def from_base(cls, rm_path: str, policy: torch.nn.Module, policy_tokenizer,
                  cfg: R2MConfig = R2MConfig(enabled=True), dtype: str = "float32", **kw: Any) -> "R2MReward":
        """A fresh R2M (fusion per ``cfg``, sized to the policy's hidden width) on the base RM at ``rm_path``."""
        tok = load_tokenizer(rm_path)
        rm = RewardModel(load_reward_model(rm_path, dtype, pad_token_id=tok.pad_token_id), tok)
        width = policy.config.get_text_config().hidden_size
        model = build_feedback_rm(rm, width, cfg.inner_dim, cfg.num_heads, cfg.init)
        return cls(model, policy_tokenizer, cfg, policy=policy, **kw)

    def bind(self, policy: torch.nn.Module, num_generations: int, chat_template_kwargs: Optional[dict] = None) -> None:
        self.policy, self.num_generations = policy, num_generations
        self.chat_template_kwargs = dict(chat_template_kwargs or {})

    def scores_training_batch(self) -> bool:
        """Whether this call scores a training generation batch (kept for the update), not an evaluation one."""
        return self.in_step and self.policy.training

    @torch.no_grad()
    def feedback(self, sequences: list[list[int]]) -> Optional[Feedback]:
        """h over each row's policy tokens (prompt then completion): the one extra forward."""
        if not self.reward.needs_policy_hidden:
            return None
        self.feedback_rows += len(sequences)
        pad = self.tokenizer.pad_token_id
        with eval_mode(self.policy):
            return sequence_feedback(self.policy, sequences, pad if pad is not None else 0,
                                     next(self.policy.parameters()).device)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids=None, trainer_state=None,
                 log_metric=None, **kwargs: Any) -> list[float]:
        if self.policy is None or self.num_generations is None:
            raise ConfigError("R2MReward: no policy bound; pass callbacks=[R2MCallback(reward)] to the trainer")
        refuse_tools(log_metric, kwargs)
        prompts, train = list(prompts), self.scores_training_batch()
        k = self.num_generations if train else 0  # evaluation rows are not groups to learn from (no calibration)
        if train:
            check_groups(prompts, k)
        step = trainer_state.global_step if trainer_state is not None else 0
        if trainer_state is not None and trainer_state.max_steps > 0:
            self.reward.schedule.total_steps = trainer_state.max_steps  # ω(t) = ω(global_step / max_steps)
        rows = read_rows(self.tokenizer, prompts, completions, completion_ids, self.chat_template_kwargs)
        fb = self.feedback(rows.sequences)
        hidden, mask = (fb.hidden, fb.mask) if fb is not None else (None, None)
        query = RewardQuery(rows.prompts, rows.responses, hidden, mask, step=step, group_size=k)
        if self.reward.calibrates(query):  # init=matched: W_o scaled once, on the first training batch
            query = self.reward.calibrate(query)
        out = self.reward(query)
        if train:
            self.pending.append(R2MBatch(out.embeddings, hidden, mask, step, len(prompts) // k, k, prompts[::k]))
        self.log_metric = log_metric
        if log_metric is not None:  # ω(t) and the rest come with the update's statistics (R2MCallback)
            log_metric("r2m/vanilla_reward", out.vanilla.mean().item())
        return out.scores.tolist()


class R2MCallback(TrainerCallback):
    """Runs R2M's GREBT update after each optimiser step; saves fusion and head with checkpoints and the model.

    ``resume_from``: the checkpoint directory to restore R2M from when the trainer resumes (default:
    ``output_dir/checkpoint-<global_step>``, where ``trainer.train(resume_from_checkpoint=True)`` resumes).
    ``base_rm``: how the saved R2M names its base RM (default: where it was loaded from; a Hub id makes the
    upload of ``trainer.push_to_hub()`` loadable anywhere). ``include_base``: store the base RM inside the
    saved model's R2M (``output_dir/r2m/base``), so that it stands alone; checkpoints still only name it.
    """

    def __init__(self, reward: R2MReward, resume_from: Optional[str | Path] = None,
                 base_rm: Optional[str] = None, include_base: bool = False):
        self.reward, self.resume_from = reward, resume_from
        self.base_rm, self.include_base = base_rm, include_base
        self.updater = None
        self.history: list[dict[str, float]] = []
        """Every update's statistics, with the ``step`` it followed."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from accelerate import PartialState  # heavy: lazy

        k = getattr(args, "num_generations", None)
        if not k:
            raise ConfigError("R2MCallback: the trainer's args have no num_generations; use GRPOConfig or RLOOConfig")
        rows = args.per_device_train_batch_size * args.steps_per_generation
        procs = PartialState().num_processes
        if rows % k:
            raise ConfigError(
                f"R2MCallback: each of the {procs} processes scores per_device_train_batch_size × "
                f"steps_per_generation = {args.per_device_train_batch_size} × {args.steps_per_generation} = {rows} "
                f"completions, not a multiple of num_generations={k}, so a group would be split across processes "
                "and R2M's GREBT update needs whole groups; make per_device_train_batch_size × steps_per_generation "
                "a multiple of num_generations")
        self.check_saveable(push=bool(getattr(args, "push_to_hub", False)))
        self.reward.bind(model, k, getattr(args, "chat_template_kwargs", None))
        self.reward.model.to(next(model.parameters()).device)
        self.reward.pending, self.reward.in_step = [], False
        r2m = self.reward.reward
        dist = Dist(PartialState()) if procs > 1 else Dist()
        self.updater = GREBTUpdater(r2m.model, r2m.schedule, self.reward.cfg, dist)
        if state.global_step > 0:
            self.restore(Path(self.resume_from or Path(args.output_dir) / f"checkpoint-{state.global_step}"))

    def check_saveable(self, push: bool) -> None:
        """Refuse, before any step, a run whose R2M could not be saved, or pushed where it would not load."""
        base = self.base_rm if self.base_rm is not None else self.reward.model.base_rm
        if self.include_base:
            return
        if base is None:
            raise ConfigError("R2MCallback: the base RM of this R2M was not loaded from a path, so a saved R2M could "
                              "not name it; pass R2MCallback(reward, base_rm=<path or hub id>) or include_base=True")
        if push and hub_id_of(base) is None:
            raise ConfigError(f"R2MCallback: push_to_hub would upload an R2M whose base RM is the local path "
                              f"{str(base)!r}, which would not load from the Hub; push the base RM and pass "
                              "R2MCallback(reward, base_rm='org/name'), or pass include_base=True to upload it too")

    def on_step_begin(self, args, state, control, **kwargs):
        self.reward.in_step = True

    def on_step_end(self, args, state, control, **kwargs):
        self.reward.in_step = False
        batches, self.reward.pending = self.reward.pending, []
        if not batches:  # this step trained on a buffered generation batch, updated at the step that scored it
            return
        batch = merge(batches)
        stats = self.updater.update(batch, batch.policy_hidden)
        self.history.append({"step": state.global_step, **stats})
        self._log(stats)

    def _log(self, stats: dict[str, float]) -> None:
        """Into the trainer's metrics of this step (TRL's log averages and prints them right after)."""
        trainer = getattr(self.reward.log_metric, "__self__", None)
        metrics = getattr(trainer, "_metrics", None)
        for key, value in stats.items():
            if isinstance(metrics, dict) and "train" in metrics:
                metrics["train"][key].append(value)
            elif self.reward.log_metric is not None:
                self.reward.log_metric(key, value)  # flushed with the next generation batch

    def save(self, directory: str | Path, state, repo_id: Optional[str] = None, model: bool = True) -> Path:
        """The R2M as it is now, into ``directory`` (:meth:`FeedbackRewardModel.save_pretrained`). ``include_base``
        applies to the model (``model=True``: what ``save_model`` and ``push_to_hub`` carry), not to checkpoints."""
        return self.reward.model.save_pretrained(
            directory, self.base_rm, include_base=self.include_base and model, repo_id=repo_id,
            subfolder=R2M_DIR if repo_id else None,
            extra={"omega_floor": self.reward.cfg.omega_floor, "total_steps": state.max_steps})

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        out = self.save(Path(args.output_dir) / f"checkpoint-{state.global_step}" / R2M_DIR, state, model=False)
        tmp = out / f".tmp-{OPTIMIZER_FILE}-{os.getpid()}"
        torch.save({"optimizer": self.updater.optimizer.state_dict(), "calibration": self.reward.reward.calibration},
                   tmp)
        os.replace(tmp, out / OPTIMIZER_FILE)

    def on_train_end(self, args, state, control, **kwargs):
        """The trained R2M into ``output_dir/r2m``, beside what ``trainer.save_model()`` writes there."""
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / R2M_DIR, state, getattr(args, "hub_model_id", None))

    def on_push_begin(self, args, state, control, **kwargs):
        """``trainer.push_to_hub()`` uploads ``output_dir`` (without ``checkpoint-*``): the R2M goes with it."""
        self.check_saveable(push=True)
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / R2M_DIR, state, getattr(args, "hub_model_id", None))

    def restore(self, checkpoint: Path) -> None:
        """Fusion, head and the RM optimiser from ``checkpoint/r2m`` (written by :meth:`on_save`)."""
        d = checkpoint / R2M_DIR
        if not all((d / name).is_file() for name in ("r2m.safetensors", "r2m.json", OPTIMIZER_FILE)):
            raise CheckpointError(f"{d}: no R2M state to resume from (was {checkpoint} saved with R2MCallback?); "
                                  "pass R2MCallback(reward, resume_from=<the checkpoint directory>)")
        check_format(read_json(d / "r2m.json"), d)
        self.reward.model.load_trainable_state(load_safetensors(d / "r2m.safetensors"))
        extra = load_state_file(d / OPTIMIZER_FILE)
        self.updater.optimizer.load_state_dict(extra["optimizer"])
        self.reward.reward.calibration = extra["calibration"]
        log.info("r2m.integrations.trl: R2M fusion, head and optimiser restored from %s", d)
