"""``r2m.RLTrainer``, ``r2m.RMTrainer``, ``r2m.SERTrainer``: objects over the recipes' loops (no second loop).

They take what TRL's ``GRPOTrainer`` / ``RLOOTrainer`` / ``RewardTrainer`` take (docs/TRL.md lists every name):
``args`` as TRL's config or r2m's own arguments, models and datasets as objects or paths, ``reward_funcs``,
``peft_config``, transformers callbacks, ``train(resume_from_checkpoint=...)``. Each resolves its arguments into one
r2m ``Config`` and calls the loop the CLI calls (``run_rl``, ``run_rm``, ``run_ser``). Objects the loops read by
path are saved under ``<output_dir>/inputs/`` (:mod:`r2m.api.staging`); the policy object itself is the one trained.
A ``datasets.Dataset`` or ``IterableDataset`` is read where it is (:mod:`r2m.data.sources`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from r2m.api.args import RLArguments, RMArguments, SERArguments
from r2m.api.callbacks import TransformersHooks, callback_args, check_callbacks, is_transformers_callback, \
    trainer_state
from r2m.api.rewards import sort_reward_funcs
from r2m.api.staging import Staging
from r2m.api.trl_args import log_warnings, peft_overrides, refuse_unsupported, resolve_args, resume_config
from r2m.config.root import Config
from r2m.config.enums import PPOPrompts
from r2m.config.parsing import load_config, replace_path
from r2m.config.commands import check_models
from r2m.config.trl_map import steps_for
from r2m.errors import ConfigError
from r2m.models.loading import load_policy, load_tokenizer
from r2m.recipes.pipeline import data_paths, ensure_world_rm_backbone, read_rows, resolve_inputs, run_rm
from r2m.recipes.rl.run import run_rl
from r2m.recipes.ser import run_ser
from r2m.runtime.runlog import read_metrics

log = logging.getLogger("r2m")


def _run_dir(cfg: Config) -> Path:
    return Path(cfg.run.root) / cfg.run.name


def _hooks(callbacks: list, args: Any, cfg: Config, steps: int, model: Any, tokenizer: Any):
    """r2m's callbacks as they are, transformers' behind one adapter (with its TrainerState)."""
    ours = [cb for cb in callbacks if not is_transformers_callback(cb)]
    theirs = [cb for cb in callbacks if is_transformers_callback(cb)]
    state = trainer_state(steps)
    adapter = None
    if theirs:
        cpu = cfg.run.device == "cpu" or not torch.cuda.is_available()
        adapter = TransformersHooks(theirs, callback_args(args, str(_run_dir(cfg)), steps, cpu), state, model,
                                    tokenizer)
    return [*ours, *([adapter] if adapter else [])], adapter, state


def _train_output(state: Any, history: Sequence[dict], loss_key: str, metrics: Mapping[str, float]):
    """transformers' ``TrainOutput``: the last step, the mean training loss over the steps, the final metrics."""
    from transformers.trainer_utils import TrainOutput

    losses = [r[loss_key] for r in history if loss_key in r and math.isfinite(r[loss_key])]
    state.log_history = [dict(r) for r in history]
    state.global_step = int(history[-1]["step"]) if history else 0
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), dict(metrics))


def _count_prompts(cfg: Config, dataset: Any, tokenizer: Any) -> int:
    """The training prompts (num_train_epochs counts passes over them)."""
    if dataset is not None and not isinstance(dataset, (str, Path)) and hasattr(dataset, "__len__"):
        return len(dataset)
    return len(read_rows(cfg, "prompts", data_paths(cfg, ("prompts",))["prompts"], tokenizer))


class RLTrainer:
    """RL (RLOO, GRPO, ReMax, REINFORCE++, PPO; R2M with ``reward.r2m.enabled``), as TRL's GRPOTrainer.

    ``model``: a transformers causal LM (then ``processing_class``; trained in place, as in TRL) or a path (loaded
    here); None: the world's SFT policy. ``reward_funcs``: a reward model (path, or a sequence classifier with
    ``reward_processing_classes``) and/or callables ``f(prompts=, completions=, completion_ids=, **kwargs)``, summed
    with ``args.reward_weights``; R2M wraps the reward model. ``args``: ``trl.GRPOConfig`` / ``RLOOConfig`` or
    ``r2m.RLArguments``. Datasets: path or ``datasets.Dataset``; no ``eval_dataset``: no evaluation.
    ``rm_eval_dataset``: held-out preference pairs for the RM's accuracy (R2M's Table 3). ``overrides``: r2m fields,
    dotted (``{"reward.r2m.enabled": True}``), over ``args``.
    """

    def __init__(self, model: Any = None, reward_funcs: Any = None, args: Any = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None, reward_processing_classes: Any = None,
                 callbacks: Optional[Sequence[Any]] = None, optimizers: tuple = (None, None),
                 quantization_config: Any = None, peft_config: Any = None, tools: Any = None,
                 rollout_func: Any = None, environment_factory: Any = None, rm_eval_dataset: Any = None,
                 overrides: Optional[Mapping[str, Any]] = None):
        refuse_unsupported(optimizers=optimizers, quantization_config=quantization_config, tools=tools,
                           rollout_func=rollout_func, environment_factory=environment_factory)
        self.args = args if args is not None else RLArguments()
        self.resolved = resolve_args(args, "rl", RLArguments)
        log_warnings(self.resolved.trl)
        self.callbacks = check_callbacks(callbacks)
        self.rewards = sort_reward_funcs(reward_funcs, reward_processing_classes, self.resolved.trl.reward_weights)
        self._layers = [self.resolved.trl.overrides, self.resolved.r2m, peft_overrides(peft_config, "policy")]
        self._overrides = [dict(overrides or {}), self.resolved.overrides]
        self.staging = Staging(_run_dir(self._config({})))
        self.staging.model("policy.path", model, processing_class, "model", "model")
        self._stage_rewards()
        for key, data, what in (("data.prompts", train_dataset, "train_dataset"),
                                ("data.eval_prompts", eval_dataset, "eval_dataset"),
                                ("data.pref_eval", rm_eval_dataset, "rm_eval_dataset")):
            self.staging.dataset(key, data, what, what)
        self.cfg = self._config(self.staging.overrides)
        check_models(self.cfg, "rl", given={k for layer in [*self._layers, *self._overrides, self.staging.overrides]
                                            for k in layer})
        self.model, self.processing_class = self._policy(model, processing_class)
        self.staging.write()
        if self.resolved.trl.train_epochs is not None:
            n = _count_prompts(self.cfg, train_dataset, self.processing_class)
            self.cfg = replace_path(self.cfg, **{k.replace(".", "__"): v for k, v in
                                                 steps_for(self.resolved.trl, n, self.cfg.rl.prompts_per_step).items()})
        self.state, self.result = None, None

    def _config(self, staged: Mapping[str, Any]) -> Config:
        return load_config(self.resolved.config_file, layers=[*self._layers, staged, *self._overrides])

    def _stage_rewards(self) -> None:
        """The reward model (reward.path) and the callables; with callables only, no RM is loaded."""
        rw = self.rewards
        if rw.model is not None:
            self.staging.model("reward.path", rw.model, rw.tokenizer, "reward_funcs", "reward_model")
        elif rw.callables:
            r2m_on = self._config({}).reward.r2m.enabled
            if r2m_on:
                raise ConfigError("reward.r2m.enabled: R2M needs a reward model to fuse the policy's h into; "
                                  "reward_funcs holds only callables")
            self.staging.overrides["reward.source"] = "gold"  # loads no RM; the callables replace gold's

    def _policy(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        """The policy object trained in place (a path is loaded here, as TRL does) and its tokenizer."""
        pc = self.cfg.policy
        if model is None:
            return None, tokenizer
        if isinstance(model, (str, Path)):
            model = load_policy(str(model), pc.dtype, pc.trust_remote_code, self.cfg.run.allow_unsafe_weights)
        return model, tokenizer if tokenizer is not None else load_tokenizer(self.cfg.policy.path,
                                                                              pc.trust_remote_code)

    def _reward_terms(self) -> tuple[Any, list, float]:
        """(the primary reward function or None: the config's RM, extra (weight, fn) terms, the primary's weight).
        The callables decode with the policy's tokenizer."""
        rw = self.rewards
        if not rw.callables:
            return None, [], rw.model_weight
        tok = self.processing_class or load_tokenizer(resolve_inputs(self.cfg, need_rm=False).policy,
                                                      self.cfg.policy.trust_remote_code)
        for _, fn in rw.callables:
            fn.tokenizer = tok
        if rw.model is not None:
            return None, rw.callables, rw.model_weight
        (w0, first), rest = rw.callables[0], rw.callables[1:]
        return first, rest, w0

    def train(self, resume_from_checkpoint: Any = None):
        """Runs the loop; returns transformers' ``TrainOutput`` (``trainer.result``: r2m's ``RLResult``;
        ``trainer.state``: a ``TrainerState``; ``trainer.model``: the trained policy)."""
        resume = resume_from_checkpoint if resume_from_checkpoint is not None else self.resolved.trl.resume
        cfg = resume_config(self.cfg, resume)
        hooks, adapter, state = _hooks(self.callbacks, self.resolved.trl_args, cfg, cfg.rl.steps, self.model,
                                       self.processing_class)
        primary, extra, weight = self._reward_terms()
        if adapter:
            adapter.on_train_begin()
        result = run_rl(cfg, callbacks=hooks, reward_fn=primary, policy=self.model, extra_rewards=extra,
                        reward_weight=weight)
        self.model, self.result, self.state = result.policy, result, state
        output = _train_output(state, result.history, "loss/policy",
                               {**result.final_eval, "train_runtime": result.wall_s})
        if adapter:
            adapter.kwargs["model"] = self.model
            adapter.on_train_end()
        return output


class RMTrainer:
    """Bradley-Terry reward-model training, as TRL's RewardTrainer: ``RMTrainer(model, args, train_dataset).train()``.

    ``model``: the initialisation (a causal LM or a sequence classifier; path or object with ``processing_class``);
    None: rm.init_from, else the world's backbone. A sequence-classifier object gets the trained weights after
    ``train()``. ``args``: ``trl.RewardConfig`` or ``r2m.RMArguments``. Datasets: preference pairs (path or
    ``datasets.Dataset``, r2m's or TRL's format); no ``eval_dataset``: no held-out accuracy. ``callbacks``:
    transformers' or r2m's (``on_step_end(step, metrics)`` after each optimiser step with ``rm/loss``, ``rm/lr``,
    ``rm/grad_norm``, ``rm/train_acc``; ``on_evaluate`` with ``rm/eval_acc``; ``on_save``; True stops training).
    """

    def __init__(self, model: Any = None, args: Any = None, data_collator: Any = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None, compute_metrics: Any = None,
                 callbacks: Optional[Sequence[Any]] = None, optimizers: tuple = (None, None),
                 optimizer_cls_and_kwargs: Any = None, preprocess_logits_for_metrics: Any = None,
                 quantization_config: Any = None, peft_config: Any = None,
                 overrides: Optional[Mapping[str, Any]] = None):
        refuse_unsupported(data_collator=data_collator, compute_metrics=compute_metrics, optimizers=optimizers,
                           optimizer_cls_and_kwargs=optimizer_cls_and_kwargs, quantization_config=quantization_config,
                           preprocess_logits_for_metrics=preprocess_logits_for_metrics)
        self.args = args if args is not None else RMArguments()
        self.resolved = resolve_args(args, "rm", RMArguments)
        log_warnings(self.resolved.trl)
        self.callbacks = check_callbacks(callbacks)
        layers = [self.resolved.trl.overrides, self.resolved.r2m, peft_overrides(peft_config, "reward")]
        extra = [dict(overrides or {}), self.resolved.overrides]
        self.staging = Staging(_run_dir(load_config(self.resolved.config_file, layers=[*layers, *extra])))
        self.staging.model("rm.init_from", model, processing_class, "model", "model")
        self.staging.dataset("data.pref_train", train_dataset, "train_dataset", "train_dataset")
        self.staging.dataset("data.pref_eval", eval_dataset, "eval_dataset", "eval_dataset")
        self.cfg = load_config(self.resolved.config_file, layers=[*layers, self.staging.overrides, *extra])
        check_models(self.cfg, "rm", given={k for layer in [*layers, *extra, self.staging.overrides] for k in layer})
        self.model, self.processing_class = model, processing_class
        self.staging.write()
        self.state, self.result = None, None

    def train(self, resume_from_checkpoint: Any = None):
        """Trains and saves to ``<output_dir>/checkpoints/final``; returns transformers' ``TrainOutput``
        (``trainer.result``: r2m's ``RMResult``, ``.eval`` the held-out accuracy, ``.stopped_early``)."""
        resume = resume_from_checkpoint if resume_from_checkpoint is not None else self.resolved.trl.resume
        cfg = resume_config(self.cfg, resume)
        paths = data_paths(cfg, ("pref_train",))
        init = cfg.rm.init_from or str(ensure_world_rm_backbone(cfg))
        out = _run_dir(cfg) / "checkpoints" / "final"
        steps = cfg.rm.max_steps or 0
        hooks, adapter, state = _hooks(self.callbacks, self.resolved.trl_args, cfg, steps, self.model,
                                       self.processing_class)
        if adapter:
            adapter.on_train_begin()
        result = run_rm(cfg, init, paths["pref_train"], paths["pref_eval"] or None, out, cfg.run.name,
                        trackers=True, resume=cfg.run.resume == "auto", adapt=True, callbacks=hooks)
        self.result, self.state = result, state
        self._load_trained(out)
        metrics = {"eval_accuracy": result.eval.accuracy} if result.eval is not None else {}
        history = [r for r in read_metrics(_run_dir(cfg) / "metrics.jsonl") if "rm/loss" in r]
        output = _train_output(state, history, "rm/loss", metrics)
        if adapter:
            adapter.on_train_end()
        return output

    def _load_trained(self, final: Path) -> None:
        """The trained RM into the model object when it is a sequence classifier (in place), else loaded."""
        from transformers import AutoModelForSequenceClassification

        trained = AutoModelForSequenceClassification.from_pretrained(final)
        if self.model is not None and not isinstance(self.model, (str, Path)) and \
                type(self.model).__name__.endswith("ForSequenceClassification"):
            self.model.load_state_dict(trained.state_dict())
        else:
            self.model = trained


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

    def __init__(self, model: Any = None, policy: Any = None, args: Optional[SERArguments] = None,
                 train_dataset: Any = None, eval_dataset: Any = None, prompts_dataset: Any = None,
                 eval_prompts_dataset: Any = None, callbacks: Sequence[Any] = (), processing_class: Any = None,
                 policy_processing_class: Any = None, overrides: Optional[Mapping[str, Any]] = None):
        if args is not None and not isinstance(args, SERArguments):
            raise ConfigError(f"args: expected an r2m.SERArguments, got {type(args).__name__}")
        self.args = args or SERArguments()
        self.callbacks = check_callbacks(list(callbacks))
        if any(is_transformers_callback(cb) for cb in self.callbacks):
            raise ConfigError("callbacks: SERTrainer takes r2m.TrainerCallbacks (its steps are SER loops)")
        self.staging = Staging(_run_dir(self.args.to_config(overrides)))
        self.staging.model("rm.init_from", model, processing_class, "model", "model")
        self.staging.model("policy.path", policy, policy_processing_class, "policy", "policy")
        for key, data, what in (("data.pref_train", train_dataset, "train_dataset"),
                                ("data.pref_eval", eval_dataset, "eval_dataset"),
                                ("data.prompts", prompts_dataset, "prompts_dataset"),
                                ("data.eval_prompts", eval_prompts_dataset, "eval_prompts_dataset")):
            self.staging.dataset(key, data, what, what)
        if prompts_dataset is not None:
            self.staging.overrides["ser.ppo_prompts"] = "world"  # SER reads data.prompts only then
        self.cfg = self.args.to_config({**self.staging.overrides, **dict(overrides or {})})
        if prompts_dataset is not None and self.cfg.ser.ppo_prompts != PPOPrompts.WORLD:
            raise ConfigError("prompts_dataset: SER's PPO stage reads data.prompts only with ser.ppo_prompts=world, "
                              f"and the overrides set ser.ppo_prompts={self.cfg.ser.ppo_prompts.value}")
        self.staging.write()

    def train(self):
        """Runs SER (and PPO with ``ser.ppo``); returns its ``SERResult`` (``stop["reason"]``, ``history``, ...)."""
        return run_ser(self.cfg, callbacks=self.callbacks)


__all__ = ["RLTrainer", "RMTrainer", "SERTrainer"]
