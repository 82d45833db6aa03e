"""Every name a TRL user passes (``GRPOConfig``, ``RLOOConfig``, ``RewardConfig``, their ``TrainingArguments``,
TRL's script and model arguments, the trainers' ``__init__`` arguments) and what r2m does with it.

Each name has one :class:`Rule`: ``mapped`` (onto r2m fields, by :mod:`r2m.config.trl_map`), ``no effect`` (accepted;
it changes nothing r2m computes: logging, hub, data-loader knobs) or ``TRL's default only`` (accepted at TRL's
default, where the table says what r2m does; any other value is refused, naming the reason). docs/TRL.md's table is
:func:`markdown_table` (a test keeps them equal and checks that every field of the installed TRL is here).
Importing this module imports neither torch nor TRL.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional


class Kind(str, enum.Enum):
    MAPPED = "mapped"
    NO_EFFECT = "no effect"
    DEFAULT_ONLY = "TRL's default only"


class Scope(str, enum.Enum):
    """Which subcommands (and trainers) take a name."""

    RUN = "every command"
    """Where the run lives and how it is logged: every subcommand."""
    TRAIN = "rl, rm, sft"
    """``TrainingArguments`` and the model arguments: the three training subcommands."""
    RL = "rl"
    """``GRPOConfig`` / ``RLOOConfig`` and their trainers: ``r2m rl``, ``r2m.RLTrainer``."""
    RM = "rm"
    """``RewardConfig`` and ``RewardTrainer``: ``r2m rm``, ``r2m.RMTrainer``."""

    def takes(self, command: str) -> bool:
        return self == Scope.RUN or command in {Scope.TRAIN: ("rl", "rm", "sft"), Scope.RL: ("rl",),
                                                Scope.RM: ("rm",)}[self]


@dataclass(frozen=True)
class Rule:
    kind: Kind
    doc: str
    """r2m's behaviour, as the table states it."""
    scope: Scope = Scope.TRAIN
    defaults: tuple = ()
    """DEFAULT_ONLY: TRL's default(s) (several when GRPOConfig, RLOOConfig and RewardConfig differ)."""
    ok: tuple = ()
    """DEFAULT_ONLY: the values r2m honours as TRL does; a TRL default outside ``ok`` is accepted with a warning."""

    def check(self, name: str, value: Any) -> Optional["Verdict"]:
        """None when r2m honours ``value`` as TRL does; else a warning (TRL's default, which r2m does not
        reproduce) or a refusal, with the reason."""
        if self.kind != Kind.DEFAULT_ONLY or _same(value, self.ok):
            return None
        if _same(value, self.defaults):
            return Verdict(False, f"{name}={value!r} (TRL's default): {self.doc}")
        return Verdict(True, f"{name}={value!r}: {self.doc}")


class Verdict(NamedTuple):
    refused: bool
    """True: the value is refused; False: accepted with a warning."""
    text: str


def _same(value: Any, allowed: tuple) -> bool:
    norm = (lambda v: tuple(v) if isinstance(v, list) else v)
    return any(norm(value) == norm(a) for a in allowed)


RULES: dict[str, Rule] = {}
"""TRL name -> its rule."""


def _add(names: str, kind: Kind, doc: str, scope: Scope = Scope.TRAIN, defaults: tuple = (), ok: Any = None) -> None:
    for name in names.split():
        assert name not in RULES, name
        RULES[name] = Rule(kind, doc, scope, defaults, defaults if ok is None else ok)


M, N, D = Kind.MAPPED, Kind.NO_EFFECT, Kind.DEFAULT_ONLY
R, T, RL, RM = Scope.RUN, Scope.TRAIN, Scope.RL, Scope.RM
_NOT_TRL_STEPS = "TRL counts optimiser steps; r2m's rl.* counts RL steps of steps_per_generation/GA x num_iterations"

# ------------------------------------------------------------------ where the run lives, what it logs
_add("output_dir", M, "run.root / run.name: the last component names the run (and its trackers)", R)
_add("seed", M, "run.seed", R)
_add("report_to", M, "run.log_with: tensorboard, wandb (a list, or none)", R)
_add("bf16", M, "run.mixed_precision=bf16 (false: no)", R)
_add("fp16", M, "run.mixed_precision=fp16 (CUDA only)", R)
_add("use_cpu", M, "run.device=cpu", R)
_add("disable_tqdm", M, "run.progress = not disable_tqdm", R)
_add("trust_remote_code", M, "policy.trust_remote_code (r2m rm: reward.trust_remote_code)", R)
_add("run_name", N, "trackers are named after run.name, output_dir's last component", R)
_add("project trackio_space_id trackio_bucket_id trackio_static_space_id", N, "trackio settings; r2m logs through "
     "accelerate's trackers (run.log_with)", R)
_add("logging_strategy logging_steps logging_first_step log_on_each_node logging_nan_inf_filter log_level "
     "log_level_replica include_num_input_tokens_seen", N, "r2m logs every step to metrics.jsonl and the trackers", R)
_add("debug skip_memory_metrics do_train do_eval do_predict local_rank", N, "not read by TRL's trainers either", R)

# ------------------------------------------------------------------ models
_add("model_name_or_path", M, "the model the command trains: r2m rl / sft: policy.path; r2m rm: rm.init_from; "
     "r2m eval policy: policy.path, eval rm: reward.path", R)
_add("model", M, "the trained model, a path or a transformers model (trained in place, as in TRL)", T)
_add("processing_class", M, "the model's tokenizer (required with a model object)", T)
_add("dtype", M, "policy.dtype (r2m rm: reward.dtype): float32, bfloat16 or float16", T)
_add("model_revision", D, "r2m loads a hub model's main revision", T, ("main",))
_add("attn_implementation", D, "r2m loads the model's default attention", T, (None,))
_add("model_init_kwargs", D, "r2m loads models itself (policy.dtype, policy.trust_remote_code)", T, (None,))
_add("load_in_8bit load_in_4bit", D, "quantised training is not supported", T, (False,))
_add("quantization_config", D, "quantised training is not supported", T, (None,))
_add("bnb_4bit_quant_type use_bnb_nested_quant bnb_4bit_quant_storage", N, "read only with load_in_4bit (refused)", T)
_add("peft_config", M, "a peft LoraConfig: policy.lora (r2m rm: reward.lora): r, lora_alpha, lora_dropout, "
     "target_modules; its other fields at peft's defaults only", T)
_add("use_peft", M, "policy.lora.enabled (r2m rm: reward.lora.enabled)", T)
_add("lora_r lora_alpha lora_dropout", M, "policy.lora.r / alpha / dropout (r2m rm: reward.lora.*)", T)
_add("lora_target_modules", M, "policy.lora.target_modules (r2m rm: reward.lora.*); unset: peft's own choice "
     "(peft-default)", T)
_add("lora_task_type", N, "r2m sets the task type from the trained model (causal LM or sequence classifier)", T)
_add("lora_target_parameters lora_modules_to_save", D, "r2m adapts modules only; an RM's score head always trains "
     "fully", T, (None,))
_add("use_rslora use_dora", D, "plain LoRA only", T, (False,))
_add("disable_dropout", D, "r2m trains with the model's own dropout (Llama, Qwen: 0)", T, (False, True), (False,))
_add("cast_lm_head_to_fp32", D, "the LM head keeps the policy's dtype", RL, (False,))
_add("router_aux_loss_coef", D, "no mixture-of-experts auxiliary loss", RL, (None,))

# ------------------------------------------------------------------ data
_add("train_dataset", M, "the training set: r2m rl: data.prompts; r2m rm: data.pref_train (path or "
     "datasets.Dataset)", T)
_add("eval_dataset", M, "the evaluation set (data.eval_prompts, data.pref_eval); none: no evaluation, as TRL", T)
_add("dataset_name", M, "the training set (rl: data.prompts, rm: data.pref_train, sft: data.sft) and, when "
     "eval_strategy is not no, the evaluation set; read in TRL's formats", T)
_add("dataset_config", M, "data.config", T)
_add("dataset_train_split", M, "data.splits of the training set", T)
_add("dataset_test_split", M, "data.splits of the evaluation set (read only when eval_strategy is not no)", T)
_add("dataset_streaming", M, "data.streaming", T)
_add("dataset_num_proc", N, "r2m reads datasets in one process", RM)
_add("shuffle_dataset", D, "r2m shuffles the prompts (a new order each pass)", RL, (True,))
_add("data_collator", D, "r2m collates itself", RM, (None,))
_add("chat_template_path", D, "each model reads its own tokenizer's chat template", RM, (None,))
_add("eos_token pad_token", D, "r2m uses the tokenizer's own", RM, (None,))
_add("max_length", M, "reward.max_length: the longest RM input, longer ones keep their last tokens and are counted", RM)
_add("max_prompt_length", M, "data.max_prompt_tokens (TRL <= 0.2x's name; TRL 1.x does not cut prompts)", RL)
_add("dataloader_drop_last dataloader_num_workers dataloader_pin_memory dataloader_persistent_workers "
     "dataloader_prefetch_factor dataloader_multiprocessing_context dataloader_in_order remove_unused_columns "
     "label_names length_column_name ignore_bias_buffers", N, "r2m builds its batches without a DataLoader", T)
_add("train_sampling_strategy", D, "r2m samples uniformly without replacement", T, ("random",))
_add("pad_to_multiple_of", N, "padding changes no result", T)

# ------------------------------------------------------------------ optimisation
_add("learning_rate", M, "the trained section's lr: rl.lr, rm.lr, sft.lr", T)
_add("lr_scheduler_type", M, "rl.lr_schedule: linear, cosine, constant (constant_with_warmup: constant); r2m rm and "
     "sft decay by cosine after warm-up (TRL's linear default is accepted with a warning)", T)
_add("lr_scheduler_kwargs", D, "no scheduler arguments", T, (None,))
_add("warmup_steps", M, f"rl.warmup_steps ({_NOT_TRL_STEPS}); below 1: warmup_ratio; r2m rm / sft: as a ratio only",
     T)
_add("warmup_ratio", M, "rl.warmup_steps = ratio x RL steps; rm.warmup_ratio, sft.warmup_ratio (transformers < 5's "
     "name; in 5, a warmup_steps below 1 is the ratio)", T)
_add("optim", M, "adamw_torch: torch's AdamW (rl.optimizer_impl=auto), adamw_torch_fused: fused (rl); r2m rm and sft "
     "use torch's AdamW for both", T)
_add("optim_args optim_target_modules", D, "AdamW without extra arguments", T, (None,))
_add("optimizers", D, "r2m builds its AdamW and schedule from the config", T, ((None, None),))
_add("optimizer_cls_and_kwargs", D, "r2m builds its AdamW from the config", RM, (None,))
_add("weight_decay", M, "rm.weight_decay, sft.weight_decay; r2m rl: 0 only (its AdamW has none)", T)
_add("adam_beta1", D, "torch's AdamW default, as TRL's", T, (0.9,))
_add("adam_beta2", D, "torch's AdamW default, as TRL's", T, (0.999,))
_add("adam_epsilon", D, "torch's AdamW default, as TRL's", T, (1e-8,))
_add("max_grad_norm", M, "the trained section's max_grad_norm", T)
_add("gradient_accumulation_steps", M, "r2m rl: one optimiser step per minibatch of pdtbs x GA completions "
     "(rl.micro_batch_size = per_device_train_batch_size); r2m rm / sft: batch_size = pdtbs x GA x processes "
     "(one backward per step: more memory, the same update)", T)
_add("per_device_train_batch_size", M, "completions per forward (rl.micro_batch_size); a generation batch of "
     "pdtbs x processes x steps_per_generation completions is rl.prompts_per_step x num_generations; r2m rm / sft: "
     "pairs (rows) per process", T)
_add("average_tokens_across_devices", N, "one process: no difference; several: each process's token mean, averaged", T)
_add("label_smoothing_factor", D, "no label smoothing", T, (0.0,))
_add("gradient_checkpointing activation_checkpointing", M, "policy.gradient_checkpointing (r2m rm: "
     "reward.gradient_checkpointing): the same gradients, less memory", T)
_add("gradient_checkpointing_kwargs activation_checkpointing_kwargs", D, "r2m's non-reentrant defaults", T, (None,))
_add("bf16_full_eval fp16_full_eval", D, "evaluation runs in the training precision", T, (False,))
_add("tf32", D, "torch's matmul precision setting applies", T, (None,))
_add("torch_compile", D, "not compiled", T, (False,))
_add("torch_compile_backend torch_compile_mode", D, "not compiled", T, (None,))
_add("use_liger_kernel", D, "no Liger kernels", T, (False,))
_add("liger_kernel_config", D, "no Liger kernels", T, (None,))
_add("neftune_noise_alpha", D, "no NEFTune noise", T, (None,))
_add("auto_find_batch_size", D, "batch sizes are as configured", T, (False,))
_add("use_cache torch_empty_cache_steps", N, "memory and speed only", T)
_add("activation_offloading", D, "no activation offloading", RM, (False,))
_add("full_determinism", D, "r2m seeds python, numpy and torch (run.seed); CPU runs are bit-reproducible", T, (False,))
_add("data_seed", D, "the prompt order follows run.seed", T, (None,))
_add("fsdp", D, "launch with accelerate launch --config_file configs/accelerate/fsdp.yaml", T, (None, "", ()))
_add("fsdp_config deepspeed", D, "launch with accelerate launch --config_file configs/accelerate/*.yaml", T, (None,))
_add("parallelism_config", D, "launch with accelerate launch (data parallel)", T, (None,))
_add("accelerator_config", N, "accelerate's launch configuration applies", T)
_add("ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers ddp_static_graph ddp_backend ddp_timeout",
     N, "accelerate's DDP defaults; speed only", T)

# ------------------------------------------------------------------ length of training, evaluation, checkpoints
_add("max_steps", M, "rl.steps: a TRL config or recipe counts optimiser steps (rl.steps = max_steps / "
     "(steps_per_generation/GA x num_iterations)); as a single flag, rl.steps; rm.max_steps, sft.max_steps", T)
_add("num_train_epochs", M, "passes over the training set when max_steps <= 0: r2m rl: rl.steps = ceil(epochs x "
     "prompts / rl.prompts_per_step); rm.epochs, sft.epochs", T)
_add("eval_strategy", M, "no: no evaluation set from dataset_test_split; steps: rl.eval_every (eval_steps, else "
     "logging_steps); epoch: refused (r2m rl counts steps). r2m evaluates before step 1 and after the last too", T)
_add("eval_steps", M, f"rl.eval_every ({_NOT_TRL_STEPS}); r2m rm evaluates once, after training", T)
_add("eval_delay", D, "evaluation starts at step 0", T, (0, 0.0))
_add("eval_on_start", N, "r2m evaluates before the first step whenever it evaluates", T)
_add("per_device_eval_batch_size", N, "eval.batch_size (prompts per generation batch) applies; memory only", T)
_add("prediction_loss_only eval_do_concat_batches eval_use_gather_object eval_accumulation_steps include_for_metrics "
     "batch_eval_metrics", N, "r2m's evaluation samples completions and scores them; these Trainer.evaluate knobs do "
     "not apply", T)
_add("compute_metrics preprocess_logits_for_metrics", D, "r2m rm reports held-out pairwise accuracy", RM, (None,))
_add("save_strategy", M, "steps: save_steps; no: checkpoints only at the end (save_every 0); epoch, best: refused", T)
_add("save_steps", M, f"the trained section's save_every ({_NOT_TRL_STEPS})", T)
_add("save_total_limit", M, "run.keep_checkpoints (none: keep all)", T)
_add("save_only_model", D, "checkpoints hold everything a resume needs", T, (False,))
_add("save_on_each_node", N, "rank 0 writes the checkpoints", T)
_add("enable_jit_checkpoint", N, "r2m always checkpoints on SIGINT/SIGTERM", T)
_add("resume_from_checkpoint", M, "true, or the run's latest checkpoints/step-N: run.resume=auto; another path is "
     "refused (r2m resumes from the run's latest checkpoint)", T)
_add("ignore_data_skip", N, "a resume restores the prompt sampler's position exactly", T)
_add("restore_callback_states_from_checkpoint", D, "callbacks are not checkpointed", T, (False,))
_add("load_best_model_at_end", D, "the final model is the last step's (rl.stop_on_alarm keeps the best before the "
     "alarm)", T, (False,))
_add("metric_for_best_model greater_is_better", N, "read only with load_best_model_at_end (refused)", T)
_add("push_to_hub", D, "not pushed; push checkpoints/final with huggingface_hub", T, (False,))
_add("hub_token hub_private_repo hub_model_id hub_strategy hub_always_push hub_revision", N,
     "read only with push_to_hub (refused)", T)
_add("callbacks", M, "transformers TrainerCallbacks (on_train_begin/end, on_step_begin/end, on_log, on_evaluate, "
     "on_save; control.should_training_stop stops the run) or r2m.TrainerCallbacks", T)
_add("args", M, "a GRPOConfig, RLOOConfig or RewardConfig, or r2m's RLArguments / RMArguments", T)

# ------------------------------------------------------------------ RL: sampling
_add("reward_funcs", M, "reward models (path or transformers model) and callables f(prompts=, completions=, "
     "completion_ids=, **kw), summed with reward_weights; the CLI takes a reward model (reward_model_name_or_path) "
     "and dotted import paths", RL)
_add("reward_model_name_or_path", M, "reward.path", RL)
_add("reward_processing_classes", M, "the reward models' tokenizers (required with model objects)", RL)
_add("reward_weights", M, "the weights of reward_funcs' weighted sum (default: 1 each)", RL)
_add("multi_objective_aggregation", D, "rewards are summed, then the group advantage normalises the sum", RL,
     ("sum_then_normalize",))
_add("num_generations", M, "rl.k: completions per prompt", RL)
_add("num_generations_eval", M, "eval.samples_per_prompt (unset: num_generations)", RL)
_add("generation_batch_size steps_per_generation", M, "rl.prompts_per_step = generation batch / num_generations; "
     "rl.minibatches = steps_per_generation / GA optimiser steps per generation batch", RL)
_add("num_iterations", M, "rl.epochs: optimisation epochs over each generation batch", RL)
_add("max_completion_length", M, "rl.max_new_tokens", RL)
_add("temperature", M, "rl.temperature and eval.temperature", RL)
_add("top_p", D, "r2m samples from the full distribution", RL, (1.0,))
_add("top_k", D, "r2m samples from the full distribution", RL, (0, None))
_add("min_p", D, "r2m samples from the full distribution", RL, (None,))
_add("repetition_penalty", D, "no repetition penalty", RL, (1.0,))
_add("generation_kwargs cache_implementation chat_template_kwargs", D, "r2m's sampling settings only "
     "(rl.temperature, rl.max_new_tokens); chat templates with their defaults", RL, (None,))
_add("mask_truncated_completions", D, "truncated completions are trained on", RL, (False,))
_add("use_transformers_paged use_transformers_continuous_batching", D, "generation with generate() or vLLM", RL,
     (False,))
_add("transformers_continuous_batching_config", D, "generation with generate() or vLLM", RL, (None,))
_add("ds3_gather_for_generation", N, "r2m refuses ZeRO-3", RL)
_add("tools max_tool_calling_iterations rollout_func environment_factory", D, "single-turn generation only", RL,
     (None,))
_add("use_vllm", M, "rl.generator=vllm (colocated engine; docs/GENERATION.md)", RL)
_add("vllm_mode", D, "colocate only (no vLLM server)", RL, ("colocate",))
_add("vllm_model_impl", D, "vLLM's own model implementation", RL, ("vllm",))
_add("vllm_gpu_memory_utilization", M, "rl.vllm.gpu_memory_utilization", RL)
_add("vllm_enable_sleep_mode", M, "rl.vllm.enable_sleep_mode", RL)
_add("vllm_max_model_length", M, "rl.vllm.max_model_len (unset: 0, prompt + completion budget)", RL)
_add("vllm_tensor_parallel_size", D, "one GPU per engine", RL, (1,))
_add("vllm_structured_outputs_regex", D, "no structured outputs", RL, (None,))
_add("vllm_server_base_url vllm_server_host vllm_server_port vllm_server_timeout vllm_group_port", N,
     "read only with vllm_mode=server (refused)", RL)
_add("vllm_importance_sampling_correction", D, "with use_vllm: not applied; r2m recomputes pi_old with the trained "
     "policy, and the vLLM samples keep vLLM's sampling mismatch (accepted with a warning)", RL, (True,), (False,))
_add("vllm_importance_sampling_mode vllm_importance_sampling_clip_max vllm_importance_sampling_clip_min "
     "vllm_importance_sampling_cap", N, "read only with the correction (not applied)", RL)
_add("off_policy_mask_threshold", D, "no off-policy masking", RL, (None,))

# ------------------------------------------------------------------ RL: loss
_add("beta", M, "rl.beta; with a GRPOConfig the KL goes in the loss (rl.kl_mode=loss, k3), with an RLOOConfig in "
     "the reward (rl.kl_mode=reward, k1), as TRL; as a single flag, r2m's rl.kl_mode applies", RL)
_add("use_bias_correction_kl", D, "with beta > 0 and a GRPOConfig: r2m's KL term is not importance-weighted "
     "(accepted with a warning)", RL, (True,), (False,))
_add("epsilon", M, "rl.clip_eps", RL)
_add("epsilon_high", M, "rl.clip_eps_high", RL)
_add("delta", D, "no upper ratio clamp (r2m's rl.clip_ratio_c is the dual clip for A < 0)", RL, (None,))
_add("loss_type", M, "rl.aggregation: grpo: seq_mean_token_mean; dapo, bnpo: token_mean over each optimiser step's "
     "minibatch; dr_grpo: seq_mean_token_sum_norm; cispo, sapo, luspo, vespo: refused", RL)
_add("sapo_temperature_neg sapo_temperature_pos vespo_k_pos vespo_lambda_pos vespo_k_neg vespo_lambda_neg", N,
     "read only with loss_type sapo / vespo (refused)", RL)
_add("scale_rewards", M, "group: rl.algorithm=grpo; none: dr_grpo (no std scaling); batch: refused", RL)
_add("importance_sampling_level", M, "token: rl.ratio_level=token; sequence (GSPO's length-normalised ratio): "
     "refused (r2m's sequence ratio is the unnormalised R2M Eq. 2)", RL)
_add("normalize_advantages", D, "RLOO's advantages are not whitened", RL, (False,))
_add("reward_clip_range", M, "(-c, c): reward.clip=c; an asymmetric range is refused", RL)
_add("sync_ref_model", D, "the reference stays the initial policy", RL, (False,))
_add("ref_model_mixup_alpha ref_model_sync_steps", N, "read only with sync_ref_model (refused)", RL)
_add("top_entropy_quantile", D, "every token is trained on", RL, (1.0,))
_add("entropy_coef", D, "no entropy bonus", RL, (0.0,))
_add("use_adaptive_entropy", D, "no entropy bonus", RL, (False,))
_add("entropy_coef_min entropy_coef_max entropy_coef_delta entropy_target", N, "read only with an entropy bonus "
     "(refused)", RL)
_add("log_completions log_multimodal num_completions_to_print log_unique_prompts log_completions_hub_repo", N,
     "logging only; r2m logs each step's metrics", RL)
_add("center_rewards_coefficient", D, "no reward centring term in the Bradley-Terry loss", RM, (None,))


def markdown_table(where: dict[str, list[str]]) -> str:
    """docs/TRL.md's table: one row per name; ``where``: name -> the TRL classes that have it."""
    rows = ["| TRL name | in | r2m | verdict |", "|---|---|---|---|"]
    for name in sorted(RULES):
        rule = RULES[name]
        rows.append(f"| `{name}` | {', '.join(where.get(name, ['older TRL']))} | {rule.doc} | {_verdict(rule)} |")
    return "\n".join(rows) + "\n"


def _verdict(rule: Rule) -> str:
    if rule.kind != Kind.DEFAULT_ONLY:
        return rule.kind.value
    shown = " or ".join(f"`{d!r}`" for d in rule.ok) or "nothing"
    warned = [d for d in rule.defaults if not _same(d, rule.ok)]
    return f"refused unless {shown}" + (f" (TRL's default `{warned[0]!r}`: accepted, with a warning)" if warned
                                       else "")


EXTRA_NAMES = frozenset({"max_prompt_length", "warmup_ratio"})
"""Names r2m maps that the installed TRL does not define (older TRL's and transformers')."""


def trl_sources() -> dict[str, dict[str, Any]]:
    """Every name of the installed TRL a GRPOTrainer / RLOOTrainer / RewardTrainer user passes: class (or
    ``Trainer()`` for ``__init__``) -> {name: TRL's default}. Imports TRL."""
    import dataclasses
    import inspect

    from transformers import TrainingArguments
    from trl import GRPOConfig, GRPOTrainer, ModelConfig, RewardConfig, RewardTrainer  # heavy: lazy
    from trl import RLOOConfig, RLOOTrainer, ScriptArguments  # heavy: lazy
    from trl.scripts.grpo import GRPOScriptArguments  # heavy: lazy

    def defaults(cls: type) -> dict[str, Any]:
        return {f.name: f.default if f.default is not dataclasses.MISSING else
                (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                for f in dataclasses.fields(cls)}

    out = {c.__name__: defaults(c) for c in (TrainingArguments, GRPOConfig, RLOOConfig, RewardConfig,
                                             ScriptArguments, GRPOScriptArguments, ModelConfig)}
    for t in (GRPOTrainer, RLOOTrainer, RewardTrainer):
        params = list(inspect.signature(t.__init__).parameters.values())[1:]
        out[f"{t.__name__}()"] = {p.name: None if p.default is inspect.Parameter.empty else p.default for p in params}
    return out


def where_defined(sources: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """name -> the TRL classes that define it (TrainingArguments' fields named once, not under each config)."""
    base = set(sources["TrainingArguments"]) | set(sources["ScriptArguments"])
    where: dict[str, list[str]] = {}
    for cls, names in sources.items():
        for name in names:
            inherited = name in base and cls not in ("TrainingArguments", "ScriptArguments")
            if not inherited:
                where.setdefault(name, []).append(cls)
    return where
