"""Rollout generation backends: transformers ``generate`` (the default) or a colocated vLLM engine.

A backend turns token-id prompts into a :class:`~r2m.experience.sampling.Generation` laid out as
``[left-padded prompt | right-padded response]``, the response's ``action_mask`` running up to and
including the first eos (both backends go through :func:`r2m.experience.sampling.assemble_generation`).

R2M's ``h`` comes from the pass that gives pi_old's log-probs (:meth:`r2m.experience.rollout.ExperienceMaker.make`):
the generation pass itself with ``rl.old_logprobs=generation`` (hf only), else a second forward pass over
the sampled tokens, so R2M does not depend on the backend.

vLLM (``rl.generator=vllm``, docs/GENERATION.md) is imported lazily, only when asked for: it needs
``pip install vllm`` and a CUDA GPU. Its engine runs in the training process, next to the policy, and
the policy's weights are streamed into it after every policy step (:meth:`Generator.sync_weights`).
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import os
import re
import sys
import time
from typing import Any, Optional, Sequence

import torch
from torch import nn

from r2m.config.root import Config
from r2m.config.training import VLLMConfig
from r2m.errors import ConfigError, ModelError
from r2m.experience.sampling import Generation, assemble_generation, generate, inherited_sampling
from r2m.models.forward import left_pad

log = logging.getLogger("r2m")


class Generator(abc.ABC):
    """Samples responses to token-id prompts from the current policy."""

    @abc.abstractmethod
    def generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                 with_logprobs: bool = False, with_hidden: bool = False) -> Generation:
        """One response per prompt (repeat prompts for K samples); temperature 0 is greedy. ``with_logprobs``/
        ``with_hidden``: also the sampled tokens' log-probs / the last layer's states (rl.old_logprobs=generation)."""

    @abc.abstractmethod
    def sync_weights(self, policy: nn.Module) -> None:
        """Make the next ``generate`` sample from ``policy``'s current weights (called after each policy step)."""


class HFGenerator(Generator):
    """transformers ``generate`` on the live policy (the default): nothing to sync."""

    def __init__(self, policy: nn.Module, eos_token_id: int, pad_token_id: int, device: torch.device):
        self.policy, self.eos_token_id, self.pad_token_id, self.device = policy, eos_token_id, pad_token_id, device

    def generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                 with_logprobs: bool = False, with_hidden: bool = False) -> Generation:
        ids, mask = left_pad(prompt_ids, self.pad_token_id)
        return generate(self.policy, ids.to(self.device), mask.to(self.device), temperature=temperature,
                        max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                        with_logprobs=with_logprobs, with_hidden=with_hidden)

    def sync_weights(self, policy: nn.Module) -> None:
        pass  # it samples from the policy module itself


# ---------------------------------------------------------------------------------------------
# vLLM
# ---------------------------------------------------------------------------------------------


def _installed(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def _cuda_device(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


def require_vllm(device: torch.device):
    """The ``vllm`` module, or a ConfigError saying what is missing (the package, a CUDA device, or both)."""
    missing = []
    if not _installed("vllm"):
        missing.append("the vllm package (pip install vllm)")
    if not _cuda_device(device):
        missing.append(f"a CUDA GPU (vLLM runs on CUDA only; this run's device is {device.type}, "
                       f"torch.cuda.is_available()={torch.cuda.is_available()})")
    if missing:
        raise ConfigError(f"rl.generator=vllm needs {' and '.join(missing)}; without them use rl.generator=hf "
                          "(the default)")
    try:
        import vllm  # heavy: lazy
    except Exception as e:  # an installed vllm whose import fails (CUDA/torch mismatch, ...)
        raise ConfigError(f"rl.generator=vllm: importing vllm failed: {type(e).__name__}: {e}") from None
    return vllm


def _load_weights_into_worker(worker: Any, weights: list) -> None:
    """Runs inside vLLM's worker (``collective_rpc``): the model's own HF-name-aware ``load_weights``."""
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.model
    model.load_weights(weights)


def policy_weights(policy: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of ``policy`` as a plain HF causal LM: what vLLM's ``load_weights`` reads.

    A PEFT LoRA policy is merged on the fly (W + ΔW of its active adapters) without touching its weights.
    The tensors are the policy's own (no copy).
    """
    if not hasattr(policy, "peft_config"):
        return list(policy.state_dict().items())
    return _merged_lora_weights(policy)


@torch.no_grad()
def _merged_lora_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    from peft.tuners.lora import LoraLayer  # heavy: lazy

    for name, pc in model.peft_config.items():
        kind = str(getattr(pc.peft_type, "value", pc.peft_type))
        if kind != "LORA" or getattr(pc, "use_dora", False):
            raise ModelError(f"rl.generator=vllm: adapter {name!r} ({kind}, use_dora={getattr(pc, 'use_dora', False)}) "
                             "cannot be merged for vLLM; only plain LoRA can")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PeftModel or add_adapter
    deltas: dict[str, torch.Tensor] = {}
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer) and not mod.merged:
            parts = [mod.get_delta_weight(a) for a in mod.active_adapters if a in mod.lora_A or
                     a in getattr(mod, "lora_embedding_A", {})]
            if parts:
                deltas[f"{name}.weight"] = torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
    out = []
    for name, t in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        clean = re.sub(r"\.modules_to_save\.[^.]+", "", name.replace(".base_layer", ""))
        if clean in deltas:
            t = (t + deltas[clean].to(t.dtype)).detach()
        out.append((clean, t))
    return out


VLLM_NEUTRAL_SAMPLING = dict(top_p=1.0, top_k=-1, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
                             frequency_penalty=0.0, min_tokens=0, ignore_eos=False)
"""vLLM's ``SamplingParams`` fields at the values that leave softmax(logits / temperature) alone, set explicitly as
the HF path sets :data:`r2m.experience.sampling.NEUTRAL_SAMPLING` (top_k=-1: no top-k in every vLLM version)."""


class VLLMGenerator(Generator):
    """A vLLM engine in this process, on the policy's GPU, sampling with the policy's current weights.

    ``model`` (a directory or hub name) gives the engine its architecture and tokenizer; the weights
    it samples with are the policy's, pushed at construction and by every :meth:`sync_weights`.
    """

    def __init__(self, model: str, policy: nn.Module, eos_token_id: int, pad_token_id: int, device: torch.device,
                 cfg: VLLMConfig = VLLMConfig(), *, max_model_len: int, seed: int = 0,
                 trust_remote_code: bool = False, allow_unsafe_weights: bool = False):
        vllm = require_vllm(device)
        # The engine core in this process (not a child): weights are then handed over as tensors, not
        # serialised, and collective_rpc runs the loader directly. A user's own setting wins.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.cfg, self.device = cfg, device
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.SamplingParams = vllm.SamplingParams
        self.TokensPrompt = _tokens_prompt_type(vllm)
        kwargs = dict(model=model, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                      enforce_eager=cfg.enforce_eager, max_model_len=max_model_len, seed=seed, tensor_parallel_size=1,
                      trust_remote_code=trust_remote_code,
                      load_format="auto" if allow_unsafe_weights else "safetensors")
        if cfg.enable_sleep_mode:
            kwargs["enable_sleep_mode"] = True
        if _engine_arg(vllm, "generation_config"):
            # Sampling and stopping as r2m asks, not as the checkpoint's generation_config.json suggests
            # (its extra eos ids would stop rows that the HF path lets run on).
            kwargs["generation_config"] = "vllm"
        self.llm = vllm.LLM(**kwargs)
        self.asleep = False
        self.pending: Optional[nn.Module] = None
        self.syncs = 0  # weight pushes so far
        self.sync_seconds = 0.0  # time spent in them
        self.sync_weights(policy)  # the engine samples from the policy's weights from the first rollout on

    # -------------------------------------------------------------- sampling

    def _sampling_params(self, n: int, temperature: float, max_new_tokens: int):
        """One SamplingParams for all requests, or one per request when each gets its own seed."""
        base = dict(n=1, temperature=temperature, max_tokens=max_new_tokens, stop_token_ids=[self.eos_token_id],
                    **VLLM_NEUTRAL_SAMPLING)
        if temperature == 0 or not self.cfg.per_request_seed:
            return self.SamplingParams(**base)
        # One draw from torch's RNG per batch (checkpointed), request i gets seed0 + i.
        seed0 = int(torch.randint(0, 2**31 - 1 - n, (1,)).item())
        return [self.SamplingParams(**base, seed=seed0 + i) for i in range(n)]

    def generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                 with_logprobs: bool = False, with_hidden: bool = False) -> Generation:
        if with_logprobs or with_hidden:  # RLConfig refuses old_logprobs=generation with vllm
            raise ConfigError("rl.old_logprobs=generation: not with rl.generator=vllm; use rl.old_logprobs=recompute")
        self._wake()
        prompts = [self.TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outputs = self.llm.generate(prompts, sampling_params=self._sampling_params(len(prompts), temperature,
                                                                                   max_new_tokens), use_tqdm=False)
        responses = [list(o.outputs[0].token_ids) for o in outputs]
        self._sleep()
        return self.assemble(prompt_ids, responses)

    def assemble(self, prompt_ids: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> Generation:
        """vLLM's per-request token lists -> the HF path's padded layout and masks."""
        if len(responses) != len(prompt_ids):
            raise RuntimeError(f"vLLM returned {len(responses)} outputs for {len(prompt_ids)} prompts")
        ids, mask = left_pad(prompt_ids, self.pad_token_id)
        width = max(1, max(len(r) for r in responses))
        resp = torch.full((len(responses), width), self.pad_token_id, dtype=torch.long)
        for i, r in enumerate(responses):
            resp[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        lengths = torch.tensor([len(r) for r in responses], dtype=torch.long)
        out = torch.cat([ids, resp], dim=1).to(self.device)
        return assemble_generation(out, mask.to(self.device), self.eos_token_id, self.pad_token_id,
                                   lengths.to(self.device))

    # -------------------------------------------------------------- weights

    def sync_weights(self, policy: nn.Module) -> None:
        """Stream ``policy``'s weights into the engine (deferred to the wake-up when it sleeps)."""
        if self.asleep:
            self.pending = policy
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            weights = policy_weights(policy)
            if hasattr(self.llm, "collective_rpc"):  # vLLM >= 0.7 (V0 and V1 engines)
                self.llm.collective_rpc(_load_weights_into_worker, args=(weights,))
            else:  # older: the driver worker's model, in this process
                self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.syncs += 1
        self.sync_seconds += time.perf_counter() - t0
        log.debug("vLLM weights synced (%d tensors) in %.3fs", len(weights), time.perf_counter() - t0)

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        if self.pending is not None:
            policy, self.pending = self.pending, None
            self.sync_weights(policy)

    def _sleep(self) -> None:
        if self.cfg.enable_sleep_mode:
            self.llm.sleep(level=1)  # weights to CPU RAM, KV cache freed, until the next rollout
            self.asleep = True


def _tokens_prompt_type(vllm):
    """``vllm.inputs.TokensPrompt`` (a TypedDict, i.e. a dict) where this vLLM has it."""
    inputs = getattr(vllm, "inputs", None)
    return getattr(inputs, "TokensPrompt", None) or dict


def _engine_arg(vllm, name: str) -> bool:
    """Whether this vLLM's engine takes the argument ``name`` (older ones refuse unknown arguments)."""
    import dataclasses

    engine_args = getattr(vllm, "EngineArgs", None)
    return (engine_args is not None and dataclasses.is_dataclass(engine_args)
            and any(f.name == name for f in dataclasses.fields(engine_args)))


# ---------------------------------------------------------------------------------------------
# Building one from the config
# ---------------------------------------------------------------------------------------------


def check_generator(cfg: Config) -> None:
    """Fail at once, before any model or world artifact is built, when ``rl.generator`` cannot run here."""
    if cfg.rl.generator == "vllm":
        require_vllm(torch.device("cuda" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu"))


def build_generator(cfg: Config, policy_dir: str, policy: nn.Module, tokenizer, device: torch.device,
                    accelerator=None) -> Generator:
    """The run's rollout backend from ``rl.generator``; for vLLM, checks the machine first."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ignored = inherited_sampling(accelerator.unwrap_model(policy) if accelerator is not None else policy)
    if ignored:
        log.info("the policy's generation config sets %s; r2m samples from softmax(logits / rl.temperature) as its "
                 "log-probs score it, and sets every sampling field itself", ignored)
    if cfg.rl.generator == "hf":
        # The unwrapped module: a DDP wrapper has no ``generate``.
        return HFGenerator(accelerator.unwrap_model(policy) if accelerator is not None else policy, eos, pad, device)
    require_vllm(device)
    if accelerator is not None and accelerator.num_processes > 1:
        raise ConfigError(f"rl.generator=vllm: one training process only for now ({accelerator.num_processes} "
                          "launched); use rl.generator=hf with accelerate launch")
    unwrapped = accelerator.unwrap_model(policy) if accelerator is not None else policy
    vc = cfg.rl.vllm
    max_len = vc.max_model_len
    if not max_len:
        max_len = cfg.data.max_prompt_tokens + cfg.rl.max_new_tokens
        config = getattr(unwrapped, "config", None)
        text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
        cap = getattr(text, "max_position_embeddings", None)
        if isinstance(cap, int) and cap > 0:
            max_len = min(max_len, cap)
    return VLLMGenerator(policy_dir, unwrapped, eos, pad, device, vc, max_model_len=max_len, seed=cfg.run.seed,
                         trust_remote_code=cfg.policy.trust_remote_code,
                         allow_unsafe_weights=cfg.run.allow_unsafe_weights)
