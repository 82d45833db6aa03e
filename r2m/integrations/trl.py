"""R2M inside TRL's ``GRPOTrainer`` and ``RLOOTrainer`` (tested with TRL >=1.16,<1.17: ``pip install 'r2m[trl]'``).

    reward = R2MReward.from_base(rm_path, policy, tokenizer, R2MConfig(enabled=True))
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], callbacks=[R2MCallback(reward)], ...)

:class:`R2MReward` is a TRL reward function, ``(prompts, completions, **kwargs) -> list[float]``,
returning r_φ(x, y, h) (R2M paper Eq. 3-4). :class:`R2MCallback` runs the GREBT update (the one of
:mod:`r2m.trainers.r2m_update`, Algorithm 1 lines 15-20) after each optimiser step on the groups
the reward function scored, and saves and restores the fusion module and head with each checkpoint.

Where this differs from r2m's own loop (:mod:`r2m.trainers.pg`):

- **h costs one extra forward.** TRL gives reward functions texts, not hidden states, so the reward
  runs one no-grad forward of the policy over prompt + completion with hidden states (the policy's
  own tokenizer, :func:`r2m.rollout.text_feedback`) per generation batch. r2m's loop takes h from the
  log-prob pass it makes anyway. Its measured cost is in docs/TRL.md.
- **The update reads the scoring h.** r2m's loop refreshes h during the last policy epoch; here the
  update reads the h of the policy that sampled (equal when ``num_iterations=1`` and one optimiser step
  per generation batch, up to the minibatch steps taken within it).
- **ω(t)**: t is ``state.global_step`` when the batch was scored, T is ``state.max_steps``.
- **Texts**: completions are decoded from ``completion_ids`` with special tokens kept (``<eos>``
  included), as r2m's loop decodes responses; TRL's ``completions`` drop them. Conversational
  (chat-message) datasets are refused: R2M scores text.
- **Processes**: every process must hold whole groups of ``num_generations`` (TRL shards a generation
  batch over processes in contiguous slices of ``per_device_train_batch_size × steps_per_generation``);
  a launch where a group would be split is refused before the first step. The fusion and head are
  trained outside DDP with their gradients averaged over processes, as in r2m's loop.
- **Metrics**: the update's ``r2m/*`` statistics join TRL's log of the same step (this reaches into
  the trainers' ``_metrics``, one reason for the pinned TRL range); ``R2MCallback.history`` keeps them all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from transformers import TrainerCallback

from r2m.config import R2MConfig
from r2m.errors import CheckpointError, ConfigError, DataError
from r2m.models.r2m import FeedbackRewardModel
from r2m.experience.rewards import FeedbackReward, RewardQuery
from r2m.models.loading import load_reward_model, load_tokenizer
from r2m.models.r2m import build_feedback_rm
from r2m.models.reward import RewardModel
from r2m.experience.rollout import eval_mode, text_feedback
from r2m.runtime.distributed import Dist
from r2m.updates.r2m import R2MUpdater
from r2m.runtime.checkpoint import load_state_file
from r2m.runtime.safeio import load_safetensors

log = logging.getLogger("r2m")

TESTED_TRL = (">=1.16", "<1.17")
R2M_DIR = "r2m"
"""The fusion module and head inside each ``checkpoint-N/`` (a ``save_pretrained`` directory)."""
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


@dataclass
class R2MBatch:
    """The groups one generation batch scored: what :meth:`R2MUpdater.update` reads of an Experience."""

    rm_embeddings: torch.Tensor
    """(B, D_m) H_last from scoring (the backbone is frozen, so the update reuses it)."""
    policy_hidden: Optional[torch.Tensor]
    """(B, S-1, D_p) h, or None for the RM-head baseline (no fusion)."""
    policy_mask: Optional[torch.Tensor]
    """(B, S-1) 1 on h's real positions."""
    step: int
    """t: ``state.global_step`` when the batch was scored."""
    n: int
    """Groups (prompts) in the batch."""
    k: int
    """Completions per group (``num_generations``)."""


def check_groups(prompts: Sequence[str], k: int) -> None:
    """Rows must be whole, consecutive groups of ``k`` completions of one prompt (TRL's RepeatSampler order)."""
    if len(prompts) % k:
        raise ConfigError(f"R2MReward: {len(prompts)} completions on this process, not a multiple of "
                          f"num_generations={k}: a group is split across processes")
    for i in range(0, len(prompts), k):
        if any(p != prompts[i] for p in prompts[i: i + k]):
            raise ConfigError(f"R2MReward: rows {i}..{i + k - 1} are not {k} completions of one prompt; R2M's "
                              "GREBT update needs whole groups of num_generations consecutive rows")


class R2MReward:
    """A TRL reward function: r_φ(x, y, h) with h from an extra no-grad forward of the trainer's policy."""

    def __init__(self, model: FeedbackRewardModel, policy_tokenizer, cfg: R2MConfig = R2MConfig(enabled=True),
                 policy: Optional[torch.nn.Module] = None, batch_size: int = 256, seed: int = 0, name: str = "r2m"):
        trl_version()
        self.model, self.tokenizer, self.cfg, self.policy = model, policy_tokenizer, cfg, policy
        self.reward = FeedbackReward(model, cfg, total_steps=1, batch_size=batch_size, seed=seed)
        self.num_generations: Optional[int] = None
        """Set by :class:`R2MCallback` from the trainer's args."""
        self.pending: Optional[R2MBatch] = None
        """The last scored batch, until the callback's update takes it."""
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

    def bind(self, policy: torch.nn.Module, num_generations: int) -> None:
        self.policy, self.num_generations = policy, num_generations

    def responses(self, completions: Sequence[Any], completion_ids: Optional[Sequence[Sequence[int]]]) -> list[str]:
        """Completion texts as r2m's loop decodes them: special tokens kept, so ``<eos>`` is scored."""
        if completion_ids is None:
            return list(completions)
        return [self.tokenizer.decode(list(ids), skip_special_tokens=False) for ids in completion_ids]

    @torch.no_grad()
    def feedback(self, prompts: list[str], responses: list[str]):
        """h over each (prompt, completion), on the policy's own tokens: the one extra forward."""

        if not self.reward.needs_policy_hidden:
            return None
        self.feedback_rows += len(prompts)
        with eval_mode(self.policy):
            return text_feedback(self.policy, self.tokenizer, prompts, responses, next(self.policy.parameters()).device)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids=None, trainer_state=None,
                 log_metric=None, **kwargs: Any) -> list[float]:
        if self.policy is None or self.num_generations is None:
            raise ConfigError("R2MReward: no policy bound; pass callbacks=[R2MCallback(reward)] to the trainer")
        if prompts and not isinstance(prompts[0], str):
            raise DataError(f"R2MReward: prompts must be text (a 'prompt' column of strings), got "
                            f"{type(prompts[0]).__name__}; conversational datasets are not supported")
        prompts, k = list(prompts), self.num_generations
        check_groups(prompts, k)
        step = trainer_state.global_step if trainer_state is not None else 0
        if trainer_state is not None and trainer_state.max_steps > 0:
            self.reward.total_steps = trainer_state.max_steps  # ω(t) = ω(global_step / max_steps)
        responses = self.responses(completions, completion_ids)
        fb = self.feedback(prompts, responses)
        hidden, mask = (fb.hidden, fb.mask) if fb is not None else (None, None)
        out = self.reward(RewardQuery(prompts, responses, hidden, mask, step=step, group_size=k))
        self.pending = R2MBatch(out.embeddings, hidden, mask, step, len(prompts) // k, k)
        self.log_metric = log_metric
        if log_metric is not None:  # ω(t) and the rest come with the update's statistics (R2MCallback)
            log_metric("r2m/vanilla_reward", out.vanilla.mean().item())
        return out.scores.tolist()


class R2MCallback(TrainerCallback):
    """Runs R2M's GREBT update after each optimiser step; saves/restores fusion and head with checkpoints.

    ``resume_from``: the checkpoint directory to restore R2M from when the trainer resumes (default:
    ``output_dir/checkpoint-<global_step>``, where ``trainer.train(resume_from_checkpoint=True)`` resumes).
    """

    def __init__(self, reward: R2MReward, resume_from: Optional[str | Path] = None):
        self.reward, self.resume_from = reward, resume_from
        self.updater = None
        self.history: list[dict[str, float]] = []
        """Every update's statistics, with the ``step`` it followed."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from accelerate import PartialState


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
        self.reward.bind(model, k)
        self.reward.model.to(next(model.parameters()).device)
        self.updater = R2MUpdater(self.reward.reward, self.reward.cfg, Dist(PartialState()) if procs > 1 else Dist())
        if state.global_step > 0:
            self.restore(Path(self.resume_from or Path(args.output_dir) / f"checkpoint-{state.global_step}"))

    def on_step_end(self, args, state, control, **kwargs):
        batch, self.reward.pending = self.reward.pending, None
        if batch is None:  # steps_per_generation > 1: this step reused an already-updated generation batch
            return
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

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir) / f"checkpoint-{state.global_step}" / R2M_DIR
        self.reward.model.save_pretrained(out, extra={"omega_floor": self.reward.cfg.omega_floor,
                                                      "total_steps": state.max_steps})
        torch.save({"optimizer": self.updater.optimizer.state_dict(), "calibration": self.reward.reward.calibration},
                   out / OPTIMIZER_FILE)

    def restore(self, checkpoint: Path) -> None:
        """Fusion, head and the RM optimiser from ``checkpoint/r2m`` (written by :meth:`on_save`)."""

        d = checkpoint / R2M_DIR
        if not (d / "r2m.safetensors").is_file() or not (d / OPTIMIZER_FILE).is_file():
            raise CheckpointError(f"{d}: no R2M state to resume from (was {checkpoint} saved with R2MCallback?); "
                                  "pass R2MCallback(reward, resume_from=<the checkpoint directory>)")
        self.reward.model.load_trainable_state(load_safetensors(d / "r2m.safetensors"))
        extra = load_state_file(d / OPTIMIZER_FILE)
        self.updater.optimizer.load_state_dict(extra["optimizer"])
        self.reward.reward.calibration = extra["calibration"]
        log.info("r2m.integrations.trl: R2M fusion, head and optimiser restored from %s", d)
