"""``r2m.RLTrainer``, ``r2m.RMTrainer``, ``r2m.SERTrainer``: objects over the recipes' loops (no second loop).

Each resolves its arguments into one r2m ``Config`` and calls the loop the CLI calls (``run_rl``, ``run_rm``,
``run_ser``). Objects the loops take only as paths are written to a temporary directory that lives as long
as the trainer: a ``transformers`` model (with its ``processing_class``) is saved with ``save_pretrained``. A
``datasets.Dataset`` or ``IterableDataset`` is read where it is (:mod:`r2m.data.sources`), and a Python reward
callable is injected into the RL run (no file).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from r2m.api.args import RLConfig, RMConfig, SERConfig, TrainerArgs
from r2m.config import PPOPrompts
from r2m.data.sources import register_dataset
from r2m.errors import ConfigError, DataError
from r2m.experience.rewards import RewardOutput, RewardQuery
from r2m.recipes.pipeline import data_paths, ensure_world_rm_backbone, run_rm
from r2m.recipes.rl.run import run_rl
from r2m.recipes.ser import run_ser

log = logging.getLogger("r2m")


class CallableReward:
    """A Python reward ``(prompts, completions) -> scores`` as an RL reward function (no RM, so no R2M)."""

    needs_policy_hidden = False
    reward_model = None

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]]):
        self.fn = fn

    def __call__(self, query: RewardQuery) -> RewardOutput:
        scores = torch.as_tensor(self.fn(list(query.prompts), list(query.responses)), dtype=torch.float32)
        if scores.shape != (len(query.prompts),):
            raise DataError(f"reward callable {getattr(self.fn, '__name__', self.fn)!r}: returned shape "
                            f"{tuple(scores.shape)}, expected one score per completion ({len(query.prompts)},)")
        return RewardOutput(scores.flatten(), None)


class _Staging:
    """The trainer's temporary directory and the config overrides its objects became."""

    def __init__(self):
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        self.overrides: dict[str, Any] = {}
        self.datasets: list = []

    def dir(self, name: str) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="r2m-api-")
        return Path(self._tmp.name) / name

    def model(self, key: str, model: Any, tokenizer: Any, what: str) -> None:
        if model is None:
            return
        if isinstance(model, (str, Path)):
            self.overrides[key] = str(model)
            return
        if not hasattr(model, "save_pretrained") or tokenizer is None:
            raise ConfigError(f"{what}: expected a path or a transformers model with its tokenizer "
                              f"(processing_class=...), got {type(model).__name__}")
        out = self.dir(key)
        model.save_pretrained(out)  # the loops read models by path (policy.path, reward.path)
        tokenizer.save_pretrained(out)
        self.overrides[key] = str(out)

    def dataset(self, key: str, data: Any, what: str) -> None:
        if data is None:
            return
        if isinstance(data, (str, Path)):
            self.overrides[key] = str(data)
            return
        # Read where it is (no copy): errors name ``what``, an IterableDataset streams (r2m.data.sources).
        self.overrides[key] = register_dataset(data, what)
        self.datasets.append(data)  # the registry holds weak references: the trainer keeps its datasets


def _callbacks(callbacks: Any) -> list:
    """The ``callbacks`` argument as a list (a single callback object is refused: it is easy to pass by mistake)."""
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, (list, tuple)):
        raise ConfigError(f"callbacks: expected a list of callback objects (r2m.TrainerCallback), got "
                          f"{type(callbacks).__name__}")
    hooks = ("on_step_end", "on_evaluate", "on_save")
    for i, cb in enumerate(callbacks):
        if not any(callable(getattr(cb, h, None)) for h in hooks):
            raise ConfigError(f"callbacks[{i}]: expected an object with on_step_end, on_evaluate or on_save "
                              f"(r2m.TrainerCallback), got {type(cb).__name__}")
    return list(callbacks)


class RLTrainer:
    """RL (RLOO, GRPO, ReMax, REINFORCE++, PPO; R2M with ``args.r2m=True``): ``RLTrainer(...).train()``.

    ``model``: path or transformers causal LM (then ``processing_class``); None: the world's SFT policy.
    ``reward_model``: path, transformers sequence classifier (then ``reward_processing_class``), or a callable
    ``(prompts, completions) -> scores``; None: the config's. Datasets: path or ``datasets.Dataset`` of prompts
    (r2m's or TRL's prompt-only format: set ``data.format`` in ``args.overrides`` for TRL); ``rm_eval_dataset``:
    held-out preference pairs on which the RM's accuracy is measured (required with a user's reward model).
    """

    def __init__(self, model: Any = None, reward_model: Any = None, args: Optional[RLConfig] = None,
                 train_dataset: Any = None, eval_dataset: Any = None, callbacks: Sequence[Any] = (),
                 processing_class: Any = None, reward_processing_class: Any = None, rm_eval_dataset: Any = None):
        self.args = args or RLConfig()
        self.callbacks = _callbacks(callbacks)
        self.staging = _Staging()
        self.reward_fn = None
        self.staging.model("policy.path", model, processing_class, "model")
        if callable(reward_model) and not isinstance(reward_model, torch.nn.Module):
            if self.args.r2m:
                raise ConfigError("args.r2m: R2M needs a reward model to fuse the policy's h into; "
                                  "a Python reward callable has none")
            self.reward_fn = CallableReward(reward_model)
            self.staging.overrides["reward.source"] = "gold"  # loads no RM; the callable replaces gold's
        else:
            self.staging.model("reward.path", reward_model, reward_processing_class, "reward_model")
        self.staging.dataset("data.prompts", train_dataset, "train_dataset")
        self.staging.dataset("data.eval_prompts", eval_dataset, "eval_dataset")
        self.staging.dataset("data.pref_eval", rm_eval_dataset, "rm_eval_dataset")
        self.cfg = self.args.to_config(self.staging.overrides)

    def train(self):
        """Runs the loop; returns its ``RLResult`` (run directory, history, final evaluation)."""
        return run_rl(self.cfg, callbacks=self.callbacks, reward_fn=self.reward_fn)


class RMTrainer:
    """Bradley-Terry reward-model training: ``RMTrainer(model, args, train_dataset, eval_dataset).train()``.

    ``model``: the initialisation (a causal LM or an RM; path or object with ``processing_class``); None: rm.init_from,
    else the world's backbone. Datasets: preference pairs (path or ``datasets.Dataset``, r2m's or TRL's format).
    ``callbacks``: ``on_step_end(step, metrics)`` after each optimiser step (``rm/loss``, ``rm/lr``, ``rm/grad_norm``,
    ``rm/train_acc`` of that step), ``on_evaluate(step, metrics)`` with the held-out accuracy (``rm/eval_acc``),
    ``on_save(step, path)`` after each checkpoint and the final model; True stops training after that step.
    """

    def __init__(self, model: Any = None, args: Optional[RMConfig] = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None, callbacks: Sequence[Any] = ()):
        self.args = args or RMConfig()
        self.callbacks = _callbacks(callbacks)
        self.staging = _Staging()
        self.staging.model("rm.init_from", model, processing_class, "model")
        self.staging.dataset("data.pref_train", train_dataset, "train_dataset")
        self.staging.dataset("data.pref_eval", eval_dataset, "eval_dataset")
        self.cfg = self.args.to_config(self.staging.overrides)

    def train(self):
        """Trains and saves to ``<output_dir>/checkpoints/final``; returns the recipe's ``RMResult`` (``.eval``: the
        held-out accuracy, ``.stopped_early``: a callback stopped it)."""
        cfg = self.cfg
        paths = data_paths(cfg, ("pref_train", "pref_eval"))
        init = cfg.rm.init_from or str(ensure_world_rm_backbone(cfg))
        out = Path(cfg.run.root) / cfg.run.name / "checkpoints" / "final"
        return run_rm(cfg, init, paths["pref_train"], paths["pref_eval"], out, cfg.run.name, trackers=True,
                      resume=cfg.run.resume == "auto", adapt=True, callbacks=self.callbacks)


class SERTrainer:
    """SER (self-evolved reward learning, then PPO with the kept RM), as ``r2m ser``: ``SERTrainer(...).train()``.

    ``model``: the RM initialisation of every loop's seed RM (rm.init_from; a causal LM or an RM, path or
    transformers object with ``processing_class``); None: the world's RM backbone. ``policy``: the PPO stage's
    policy (policy.path; path or causal LM with ``policy_processing_class``). Datasets (path or ``datasets.Dataset``,
    r2m's or TRL's preference/prompt formats): ``train_dataset`` the labelled pairs SER splits into its labelled
    seed, D_val, the unlabelled pool and the PPO prompts (data.pref_train); ``eval_dataset`` the test pairs
    (data.pref_eval); ``prompts_dataset`` PPO's training prompts instead of the split's (data.prompts, with
    ser.ppo_prompts=world); ``eval_prompts_dataset`` PPO's evaluation prompts (data.eval_prompts).
    ``callbacks``: ``on_save(loop, path)`` when a loop's RM is saved, ``on_evaluate(loop, row)`` with the loop's
    row (``ser/val_acc``, ``ser/test_acc``, ``status``, ``ser/selected``, ...); True stops the loop after that loop
    (stop reason ``callback``; keep and PPO follow). The PPO stage passes them on to ``run_rl`` (steps from 0).
    ``overrides`` adds dotted fields (between the arguments above and ``args.overrides``).
    """

    def __init__(self, model: Any = None, policy: Any = None, args: Optional[SERConfig] = None,
                 train_dataset: Any = None, eval_dataset: Any = None, prompts_dataset: Any = None,
                 eval_prompts_dataset: Any = None, callbacks: Sequence[Any] = (), processing_class: Any = None,
                 policy_processing_class: Any = None, overrides: Optional[Mapping[str, Any]] = None):
        if args is not None and not isinstance(args, SERConfig):
            raise ConfigError(f"args: expected an r2m.SERConfig, got {type(args).__name__}")
        self.args = args or SERConfig()
        self.callbacks = _callbacks(callbacks)
        self.staging = _Staging()
        self.staging.model("rm.init_from", model, processing_class, "model")
        self.staging.model("policy.path", policy, policy_processing_class, "policy")
        self.staging.dataset("data.pref_train", train_dataset, "train_dataset")
        self.staging.dataset("data.pref_eval", eval_dataset, "eval_dataset")
        self.staging.dataset("data.prompts", prompts_dataset, "prompts_dataset")
        self.staging.dataset("data.eval_prompts", eval_prompts_dataset, "eval_prompts_dataset")
        if prompts_dataset is not None:
            self.staging.overrides["ser.ppo_prompts"] = "world"  # SER reads data.prompts only then
        self.cfg = self.args.to_config({**self.staging.overrides, **dict(overrides or {})})
        if prompts_dataset is not None and self.cfg.ser.ppo_prompts != PPOPrompts.WORLD:
            raise ConfigError("prompts_dataset: SER's PPO stage reads data.prompts only with ser.ppo_prompts=world, "
                              f"and the overrides set ser.ppo_prompts={self.cfg.ser.ppo_prompts.value}")

    def train(self):
        """Runs SER (and PPO with ``ser.ppo``); returns its ``SERResult`` (``stop["reason"]``, ``history``, ...)."""
        return run_ser(self.cfg, callbacks=self.callbacks)


__all__ = ["RLTrainer", "RMTrainer", "SERTrainer", "CallableReward", "TrainerArgs"]
