"""TRL values -> r2m overrides, per subcommand: the rules of :mod:`r2m.config.trl_names` applied.

Two ways in. A *complete* set (a ``GRPOConfig`` / ``RLOOConfig`` / ``RewardConfig`` object, or a flat TRL recipe
parsed by TRL's own parser) carries every field, defaults included, and means what it means to TRL: the batch shape,
the step count in optimiser steps, the KL placement of the trainer it configures. A *partial* set (``--num_generations
4`` on r2m's command line, r2m's own ``RLArguments``) maps only the names given, over r2m's config.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Mapping, Optional

from r2m.config.trl_names import RULES, Kind
from r2m.errors import ConfigError

log = logging.getLogger("r2m")

TRAINED = {"rl": "rl", "rm": "rm", "sft": "sft"}
"""Command -> the config section it trains (learning_rate, save_steps, ...)."""
DATA = {"rl": ("prompts", "eval_prompts"), "rm": ("pref_train", "pref_eval"), "sft": ("sft", None)}
"""Command -> its (training, evaluation) data fields."""
_ROLLOUT_NAMES = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
                  "generation_batch_size")


@dataclass
class TrlMapping:
    """What TRL's values became: r2m overrides, and what can only be resolved once the data is known."""

    overrides: dict[str, Any] = field(default_factory=dict)
    train_epochs: Optional[float] = None
    """r2m rl: passes over the prompts (rl.steps = ceil(epochs x prompts / rl.prompts_per_step), see steps_for)."""
    warmup_ratio: Optional[float] = None
    """r2m rl with train_epochs: rl.warmup_steps = ceil(ratio x rl.steps) once the steps are known."""
    reward_funcs: tuple = ()
    """GRPO's script argument: reward function names or dotted import paths (``r2m rl``)."""
    reward_weights: Optional[tuple] = None
    resume: Any = None
    """resume_from_checkpoint: True or a checkpoint path (None: not asked)."""
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Ctx:
    command: str
    values: Mapping[str, Any]
    complete: bool
    trainer: Optional[str]
    """grpo, rloo or reward for a complete set (the TRL class it came from); None for a partial one."""
    base: Callable[[str], Any]
    """An r2m field's value before the TRL names (dotted name -> value) for partial sets."""
    what: Optional[str] = None
    world: int = 1
    warnings: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    @property
    def sec(self) -> str:
        return TRAINED.get(self.command, "rl")

    @property
    def model(self) -> str:
        return "reward" if self.command == "rm" else "policy"


def _output_dir(v: Any, c: _Ctx) -> dict:
    path = PurePath(str(v))
    if not path.name:
        raise ConfigError(f"output_dir: {v!r} has no last component to name the run (run.root/run.name)")
    return {"run.root": str(path.parent), "run.name": path.name}


def _report_to(v: Any, c: _Ctx) -> dict:
    names = [v] if isinstance(v, str) else list(v or [])
    return {"run.log_with": [n for n in names if n not in ("none", "")]}  # TRL's "none": no tracker


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name}: expected true or false, got {v!r}")
    return v


def _precision(v: Any, c: _Ctx) -> dict:
    bf16, fp16 = c.get("bf16"), c.get("fp16")
    if bf16 is not None:
        _bool("bf16", bf16)
    if fp16 is not None:
        _bool("fp16", fp16)
    if bf16 and fp16:
        raise ConfigError("bf16 and fp16: at most one of them")
    if bf16 or fp16:
        return {"run.mixed_precision": "bf16" if bf16 else "fp16"}
    return {"run.mixed_precision": "no"} if (bf16 is False or c.complete) else {}


def _model_path(v: Any, c: _Ctx) -> dict:
    if v is None:
        return {}
    key = {"rl": "policy.path", "sft": "policy.path", "rm": "rm.init_from", "config": "policy.path"}.get(c.command)
    if c.command == "eval":
        key = {"policy": "policy.path", "rm": "reward.path"}.get(c.what or "")
    if key is None:
        raise ConfigError(f"model_name_or_path: r2m {c.command}{' ' + c.what if c.what else ''} trains no single "
                          "model; name r2m's own fields (policy.path, rm.init_from, reward.path)")
    return {key: str(v)}


def _lr_schedule(v: Any, c: _Ctx) -> dict:
    v = getattr(v, "value", v)
    if c.sec == "rl":
        known = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
        if v not in known:
            raise ConfigError(f"lr_scheduler_type={v!r}: r2m rl schedules linear, cosine or constant")
        return {"rl.lr_schedule": known[v]}
    if v == "linear":
        c.warnings.append(f"lr_scheduler_type='linear' (TRL's default): r2m {c.command} decays by cosine after warm-up")
    elif v != "cosine":
        raise ConfigError(f"lr_scheduler_type={v!r}: r2m {c.command} decays by cosine after warm-up")
    return {}


def _optim(v: Any, c: _Ctx) -> dict:
    v = getattr(v, "value", v)
    impl = {"adamw_torch": "auto", "adamw_torch_fused": "fused"}
    if v not in impl:
        raise ConfigError(f"optim={v!r}: r2m trains with torch's AdamW (adamw_torch, adamw_torch_fused)")
    return {"rl.optimizer_impl": impl[v]} if c.sec == "rl" else {}


def _weight_decay(v: Any, c: _Ctx) -> dict:
    if c.sec == "rl":
        if v:
            raise ConfigError(f"weight_decay={v!r}: r2m rl's AdamW has no weight decay (0 only)")
        return {}
    return {f"{c.sec}.weight_decay": v}


def _dtype(v: Any, c: _Ctx) -> dict:
    if v in (None, "auto"):
        if v == "auto":
            raise ConfigError("dtype='auto': give float32, bfloat16 or float16")
        return {}
    return {f"{c.model}.dtype": str(v)}


def _loss_type(v: Any, c: _Ctx) -> dict:
    agg = {"grpo": "seq_mean_token_mean", "dapo": "token_mean", "bnpo": "token_mean",
           "dr_grpo": "seq_mean_token_sum_norm"}
    if v not in agg:
        raise ConfigError(f"loss_type={v!r}: r2m's policy losses are grpo, dapo, bnpo and dr_grpo's "
                          "(cispo, sapo, luspo and vespo are not implemented)")
    return {"rl.aggregation": agg[v]}


def _scale_rewards(v: Any, c: _Ctx) -> dict:
    if v in ("group", True):
        return {"rl.algorithm": "grpo"} if c.trainer == "grpo" or not c.complete else {}
    if v in ("none", False):
        return {"rl.algorithm": "dr_grpo"}
    raise ConfigError(f"scale_rewards={v!r}: r2m scales by the group's std (group) or not at all (none)")


def _ratio_level(v: Any, c: _Ctx) -> dict:
    if v != "token":
        raise ConfigError(f"importance_sampling_level={v!r}: GSPO's length-normalised sequence ratio is not "
                          "implemented (r2m's rl.ratio_level=sequence is R2M Eq. 2's unnormalised ratio)")
    return {"rl.ratio_level": "token"}


def _reward_clip(v: Any, c: _Ctx) -> dict:
    if v is None:
        return {}
    lo, hi = v
    if lo != -hi:
        raise ConfigError(f"reward_clip_range={tuple(v)!r}: r2m clips symmetrically (reward.clip=c clips to [-c, c])")
    return {"reward.clip": float(hi)}


def _lora_value(key: str) -> Callable[[Any, _Ctx], dict]:
    def to(v: Any, c: _Ctx) -> dict:
        if key == "target_modules":
            v = list(v) if v else ["peft-default"]
        return {f"{c.model}.lora.{key}": v}
    return to


def _simple(dotted: str) -> Callable[[Any, _Ctx], dict]:
    return lambda v, c: {} if v is None else {dotted: v}


def _sectioned(key: str) -> Callable[[Any, _Ctx], dict]:
    return lambda v, c: {} if v is None else {f"{c.sec}.{key}": v}


MAPPERS: dict[str, Callable[[Any, _Ctx], dict]] = {
    "output_dir": lambda v, c: {} if v is None else _output_dir(v, c),
    "seed": _simple("run.seed"), "report_to": _report_to, "bf16": _precision, "fp16": _precision,
    "use_cpu": lambda v, c: {"run.device": "cpu"} if v else {},
    "disable_tqdm": lambda v, c: {} if v is None else {"run.progress": not v},
    "trust_remote_code": lambda v, c: {f"{c.model}.trust_remote_code": _bool("trust_remote_code", v)},
    "model_name_or_path": _model_path, "dtype": _dtype,
    "use_peft": lambda v, c: {f"{c.model}.lora.enabled": _bool("use_peft", v)},
    "lora_r": _lora_value("r"), "lora_alpha": _lora_value("alpha"), "lora_dropout": _lora_value("dropout"),
    "lora_target_modules": _lora_value("target_modules"),
    "dataset_config": _simple("data.config"), "dataset_streaming": _simple("data.streaming"),
    "max_length": _simple("reward.max_length"), "max_prompt_length": _simple("data.max_prompt_tokens"),
    "learning_rate": _sectioned("lr"), "lr_scheduler_type": _lr_schedule, "optim": _optim,
    "weight_decay": _weight_decay, "max_grad_norm": _sectioned("max_grad_norm"),
    "gradient_checkpointing": lambda v, c: {} if v is None else {f"{c.model}.gradient_checkpointing": bool(v)},
    "activation_checkpointing": lambda v, c: {} if v is None else {f"{c.model}.gradient_checkpointing": bool(v)},
    "save_total_limit": lambda v, c: {"run.keep_checkpoints": v or 0},
    "reward_model_name_or_path": _simple("reward.path"),
    "num_generations": _simple("rl.k"), "num_iterations": _simple("rl.epochs"),
    "max_completion_length": _simple("rl.max_new_tokens"),
    "num_generations_eval": lambda v, c: {"eval.samples_per_prompt": v or c.get("num_generations")}
    if (v or c.complete) else {},
    "temperature": lambda v, c: {"rl.temperature": v, "eval.temperature": v},
    "epsilon": _simple("rl.clip_eps"), "epsilon_high": lambda v, c: {"rl.clip_eps_high": v},
    "beta": _simple("rl.beta"), "loss_type": _loss_type, "scale_rewards": _scale_rewards,
    "importance_sampling_level": _ratio_level, "reward_clip_range": _reward_clip,
    "use_vllm": lambda v, c: {"rl.generator": "vllm" if _bool("use_vllm", v) else "hf"},
    "vllm_gpu_memory_utilization": _simple("rl.vllm.gpu_memory_utilization"),
    "vllm_enable_sleep_mode": _simple("rl.vllm.enable_sleep_mode"),
    "vllm_max_model_length": lambda v, c: {"rl.vllm.max_model_len": v or 0},
}
"""Names mapped one by one; the others (batch shape, steps, evaluation, saving, data, resume) by the groups below."""

_VLLM_ONLY = {n for n in RULES if n.startswith("vllm_")}
GROUPED = {*_ROLLOUT_NAMES, "max_steps", "num_train_epochs", "warmup_steps", "warmup_ratio", "eval_strategy",
            "eval_steps", "save_strategy", "save_steps", "dataset_name", "dataset_train_split", "dataset_test_split",
            "resume_from_checkpoint", "reward_funcs", "reward_weights", "logging_steps"}
API_ONLY = {"model", "processing_class", "peft_config", "train_dataset", "eval_dataset", "callbacks", "args",
             "reward_processing_classes"}


def _steps_value(name: str, v: Any) -> int:
    if isinstance(v, float) and not v.is_integer():
        raise ConfigError(f"{name}={v!r}: r2m takes a whole number of steps (a fraction of training is not supported)")
    return int(v)


def _rl_shape(c: _Ctx, out: dict) -> int:
    """The batch shape of r2m rl from TRL's; returns the optimiser steps per RL step (per generation batch)."""
    iters = c.get("num_iterations") or c.base("rl.epochs") or 1
    if not any(c.get(n) is not None for n in _ROLLOUT_NAMES):
        return (c.base("rl.minibatches") or 1) * iters
    k = c.get("num_generations") or c.base("rl.k")
    pdtbs, ga = c.get("per_device_train_batch_size") or 8, c.get("gradient_accumulation_steps") or 1
    gbs, spg = c.get("generation_batch_size"), c.get("steps_per_generation")
    if gbs is None:
        spg = spg or ga
        gbs = pdtbs * c.world * spg
    elif spg is None or not c.complete:
        if gbs % (pdtbs * c.world):
            raise ConfigError(f"generation_batch_size={gbs}: expected a multiple of per_device_train_batch_size x "
                              f"processes = {pdtbs * c.world}")
        spg = gbs // (pdtbs * c.world)
    if gbs % k:
        raise ConfigError(f"generation batch {gbs} (per_device_train_batch_size x processes x steps_per_generation): "
                          f"expected a multiple of num_generations={k}, as TRL requires")
    if spg % ga:
        raise ConfigError(f"steps_per_generation={spg}: expected a multiple of gradient_accumulation_steps={ga} "
                          "(r2m takes whole optimiser steps on each generation batch)")
    out.update({"rl.prompts_per_step": gbs // k, "rl.minibatches": spg // ga,
                "rl.micro_batch_size": pdtbs if ga > 1 else 0})
    return spg // ga * iters


def _rl_steps(c: _Ctx, opt: int, out: dict, m: TrlMapping) -> None:
    """max_steps (optimiser steps in a complete set, RL steps as a single flag), else num_train_epochs; warm-up."""
    max_steps = c.get("max_steps")
    if max_steps is not None and max_steps > 0:
        steps = _steps_value("max_steps", max_steps)
        if c.complete and steps % opt:
            raise ConfigError(f"max_steps={steps}: expected a multiple of the {opt} optimiser steps each generation "
                              "batch takes (steps_per_generation / gradient_accumulation_steps x num_iterations)")
        out["rl.steps"] = steps // opt if c.complete else steps
    elif c.get("num_train_epochs") is not None and (c.complete or c.has("num_train_epochs")):
        m.train_epochs = float(c.get("num_train_epochs"))
    warmup, ratio = c.get("warmup_steps"), c.get("warmup_ratio")
    if isinstance(warmup, float) and 0 < warmup < 1:  # transformers: a float below 1 is a ratio
        warmup, ratio = 0, warmup
    if warmup:
        out["rl.warmup_steps"] = math.ceil(warmup / opt) if c.complete else int(warmup)
    elif ratio:
        steps = out.get("rl.steps", None if c.complete else c.base("rl.steps"))
        if steps is None:
            m.warmup_ratio = float(ratio)
        else:
            out["rl.warmup_steps"] = math.ceil(ratio * steps)
    elif c.complete:
        out["rl.warmup_steps"] = 0


def _supervised_shape(c: _Ctx, out: dict) -> None:
    """r2m rm / sft: one optimiser step per batch of pdtbs x GA x processes rows; epochs, steps and warm-up."""
    sec = c.sec
    if c.get("per_device_train_batch_size") is not None or c.get("gradient_accumulation_steps") is not None:
        pdtbs, ga = c.get("per_device_train_batch_size") or 8, c.get("gradient_accumulation_steps") or 1
        out[f"{sec}.batch_size"] = pdtbs * ga * c.world
    if c.get("num_train_epochs") is not None:
        out[f"{sec}.epochs"] = float(c.get("num_train_epochs"))
    if c.get("max_steps") is not None:
        out[f"{sec}.max_steps"] = max(_steps_value("max_steps", c.get("max_steps")), 0)
    warmup, ratio = c.get("warmup_steps"), c.get("warmup_ratio")
    if isinstance(warmup, float) and 0 < warmup < 1:
        warmup, ratio = 0, warmup
    if warmup:
        raise ConfigError(f"warmup_steps={warmup}: r2m {c.command} warms up over a ratio of its steps (warmup_ratio)")
    if ratio is not None or c.complete:
        out[f"{sec}.warmup_ratio"] = float(ratio or 0.0)


def _schedule(c: _Ctx, opt: int, out: dict) -> bool:
    """Evaluation and checkpoints; returns whether an evaluation set is read from dataset_test_split."""
    sec, rl = c.sec, c.sec == "rl"
    per_rl = (lambda n: max(1, math.ceil(n / opt))) if (rl and c.complete) else (lambda n: n)
    strategy = getattr(c.get("eval_strategy"), "value", c.get("eval_strategy"))
    if strategy == "epoch":
        raise ConfigError("eval_strategy='epoch': r2m evaluates every rl.eval_every steps; use eval_strategy=steps")
    every = c.get("eval_steps") or (c.get("logging_steps") if strategy == "steps" else None)
    if rl and every is not None and (strategy == "steps" or not c.complete):
        out["rl.eval_every"] = per_rl(_steps_value("eval_steps", every))
    save = getattr(c.get("save_strategy"), "value", c.get("save_strategy"))
    if save in ("epoch", "best"):
        raise ConfigError(f"save_strategy={save!r}: r2m checkpoints every save_steps steps (steps) or only at the "
                          "end (no)")
    if save == "no":
        out[f"{sec}.save_every"] = 0
    elif c.get("save_steps") is not None and (save == "steps" or not c.complete):
        out[f"{sec}.save_every"] = per_rl(_steps_value("save_steps", c.get("save_steps")))
    return strategy not in (None, "no")


def _data(c: _Ctx, eval_on: bool, out: dict) -> None:
    """dataset_name and its splits onto the command's data fields, read in TRL's formats. A complete set names an
    evaluation set only when it evaluates (eval_strategy is not no), as TRL's scripts do."""
    train, evaluation = DATA.get(c.sec, (None, None))
    if train is None:
        return
    name = c.get("dataset_name")
    use_eval = evaluation is not None and (eval_on or not c.complete)
    if name is not None:
        out.update({f"data.{train}": str(name), f"data.formats.{train}": "trl"})
        if use_eval and c.complete:
            out.update({f"data.{evaluation}": str(name), f"data.formats.{evaluation}": "trl"})
    named = name is not None or not c.complete
    if c.get("dataset_train_split") is not None and named:
        out[f"data.splits.{train}"] = str(c.get("dataset_train_split"))
    if c.get("dataset_test_split") is not None and named and use_eval:
        out[f"data.splits.{evaluation}"] = str(c.get("dataset_test_split"))


def _trainer(c: _Ctx, out: dict) -> None:
    """What the TRL class itself implies: where the KL goes, the ratio, the estimator."""
    if c.trainer == "grpo":
        out.update({"rl.kl_mode": "loss", "rl.kl_estimator": "k3"})
        out.setdefault("rl.algorithm", "grpo")
        if (c.get("beta") or 0) > 0 and c.get("use_bias_correction_kl", True):
            c.warnings.append("use_bias_correction_kl=True with beta > 0: r2m's KL term in the loss is not "
                              "importance-weighted")
    elif c.trainer == "rloo":
        out.update({"rl.algorithm": "rloo", "rl.ratio_level": "sequence", "rl.kl_mode": "reward",
                    "rl.kl_estimator": "k1"})
    if c.trainer in ("grpo", "rloo") and c.get("use_vllm") and c.get("vllm_importance_sampling_correction", True):
        c.warnings.append(RULES["vllm_importance_sampling_correction"].doc)


def _one(name: str, v: Any, c: _Ctx, out: dict, errors: list[str]) -> None:
    """Check one name against its rule and map it when it maps alone."""
    rule = RULES.get(name)
    if rule is None:
        errors.append(f"{name}: not a TRL name r2m knows; give r2m's own field as section.key (r2m "
                      f"{c.command} --help-config)")
        return
    if not rule.scope.takes(c.sec if c.command in TRAINED or c.command == "config" else c.command):
        errors.append(f"{name}: r2m {c.command} does not take it (a name of {rule.scope.value})")
        return
    if (name in _VLLM_ONLY and not c.get("use_vllm")) or name in ("use_bias_correction_kl",
                                                                   "vllm_importance_sampling_correction"):
        return  # read only with use_vllm / beta (see _trainer)
    verdict = rule.check(name, v)
    if verdict is not None:
        (errors if verdict.refused else c.warnings).append(verdict.text)
    elif name in MAPPERS and rule.kind == Kind.MAPPED:
        try:
            out.update(MAPPERS[name](v, c))
        except ConfigError as e:
            errors.append(str(e))


def map_trl(values: Mapping[str, Any], command: str, *, complete: bool = False, trainer: Optional[str] = None,
            base: Callable[[str], Any] = lambda dotted: None, what: Optional[str] = None,
            world: int = 1) -> TrlMapping:
    """TRL's ``values`` for ``r2m <command>`` (rl, rm, sft, config as rl, eval with ``what``): r2m overrides, or one
    ConfigError naming every value r2m cannot honour and why."""
    command = "rl" if command == "config" else command
    c = _Ctx(command, dict(values), complete, trainer, base, what, world)
    m, out, errors = TrlMapping(), {}, []
    for name, v in values.items():
        if name not in API_ONLY:
            _one(name, v, c, out, errors)
    training = command in TRAINED and not errors
    try:
        if training and command == "rl":
            opt = _rl_shape(c, out)
            _rl_steps(c, opt, out, m)
        elif training:
            opt = 1
            _supervised_shape(c, out)
        if training:
            _data(c, _schedule(c, opt, out), out)
            _trainer(c, out)
    except ConfigError as e:
        errors.append(str(e))
    if errors:
        raise ConfigError(f"TRL arguments r2m {command} cannot honour (docs/TRL.md):\n  " + "\n  ".join(errors))
    m.overrides, m.warnings = out, c.warnings
    m.resume = values.get("resume_from_checkpoint") or None
    m.reward_funcs = tuple(values.get("reward_funcs") or ())
    m.reward_weights = tuple(values["reward_weights"]) if values.get("reward_weights") else None
    return m


def steps_for(m: TrlMapping, n_prompts: int, prompts_per_step: int) -> dict[str, int]:
    """r2m rl's steps from ``num_train_epochs`` (TRL: passes over the prompts), and the warm-up ratio's steps."""
    if m.train_epochs is None:
        return {}
    steps = max(1, math.ceil(m.train_epochs * n_prompts / prompts_per_step))
    out = {"rl.steps": steps}
    if m.warmup_ratio:
        out["rl.warmup_steps"] = math.ceil(m.warmup_ratio * steps)
    return out


FLAGS = frozenset({"bf16", "fp16", "use_vllm", "use_peft", "use_cpu", "gradient_checkpointing", "disable_tqdm",
                   "trust_remote_code"})
"""TRL names that may stand alone as flags (``--bf16`` means ``--bf16 true``)."""
