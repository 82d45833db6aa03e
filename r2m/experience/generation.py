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
from typing import Any, Iterator, Optional, Sequence

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

    whole_step = False
    """True: the rollout hands it all of a step's rows in one call (it batches them itself and draws from its own
    seeded RNG, so ``rl.rollout_batch_size`` and ``rl.rollout_chunks`` do not split its calls); False: the rollout
    calls it ``rl.rollout_batch_size`` rows at a time, under ``rl.rollout_chunks``' seeds."""

    @abc.abstractmethod
    def generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                 with_logprobs: bool = False, with_hidden: bool = False) -> Generation:
        """One response per prompt (repeat prompts for K samples); temperature 0 is greedy. ``with_logprobs``/
        ``with_hidden``: also the sampled tokens' log-probs / the last layer's states (rl.old_logprobs=generation)."""

    @abc.abstractmethod
    def sync_weights(self, policy: nn.Module) -> None:
        """Make the next ``generate`` sample from ``policy``'s current weights (called after each policy step)."""

    def release(self) -> None:  # noqa: B027 (an optional hook, not abstract)
        """The step's sampling is over (called before the policy update): free what the backend holds on the GPU
        until the next ``generate``. Nothing to free by default."""


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


def _load_weights_into_worker(worker: Any, weights) -> None:
    """Runs inside vLLM's worker (``collective_rpc``): the model's own HF-name-aware ``load_weights``."""
    model = worker.get_model() if hasattr(worker, "get_model") else worker.model_runner.model
    model.load_weights(weights)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2 DTensor) tensor gathered whole; a plain one as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def policy_weights(policy: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of ``policy`` as a plain HF causal LM, one at a time: what vLLM's ``load_weights`` reads.

    A PEFT LoRA policy's targets are merged on the fly (W + ΔW of its active adapters, one tensor alive at a time),
    so neither a merged copy of the model nor a merge into the policy's (and the adapter-free reference's) own
    weights is made. Plain tensors are the policy's own (no copy); FSDP2 shards are gathered one tensor at a time.
    """
    if not hasattr(policy, "peft_config"):
        return ((name, _full(t)) for name, t in policy.state_dict().items())
    return lora_base_weights(policy, merge=True)


def lora_base_weights(model: nn.Module, merge: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """A PEFT LoRA model's base weights under the base model's names; ``merge``: each LoRA target as W + ΔW."""
    from peft.tuners.lora import LoraLayer  # heavy: lazy

    for name, pc in model.peft_config.items():
        kind = str(getattr(pc.peft_type, "value", pc.peft_type))
        if kind != "LORA" or getattr(pc, "use_dora", False):
            raise ModelError(f"rl.generator=vllm: adapter {name!r} ({kind}, use_dora={getattr(pc, 'use_dora', False)}) "
                             "cannot be merged for vLLM; only plain LoRA can")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PeftModel or add_adapter
    layers = {f"{name}.weight": mod for name, mod in base.named_modules()
              if merge and isinstance(mod, LoraLayer) and not mod.merged}
    for name, t in base.state_dict().items():
        if ".lora_" in name or ".original_module." in name:
            continue
        clean = re.sub(r"\.modules_to_save\.[^.]+", "", name.replace(".base_layer", ""))
        mod = layers.get(clean)
        if mod is not None:
            parts = [mod.get_delta_weight(a) for a in mod.active_adapters if a in mod.lora_A or
                     a in getattr(mod, "lora_embedding_A", {})]
            if parts:
                t = (_full(t) + sum(_full(p) for p in parts).to(t.dtype)).detach()
        yield clean, _full(t)


VLLM_NEUTRAL_SAMPLING = dict(top_p=1.0, top_k=-1, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
                             frequency_penalty=0.0, min_tokens=0, ignore_eos=False)
"""vLLM's ``SamplingParams`` fields at the values that leave softmax(logits / temperature) alone, set explicitly as
the HF path sets :data:`r2m.experience.sampling.NEUTRAL_SAMPLING` (top_k=-1: no top-k in every vLLM version)."""


class TPGroup:
    """This process's tensor-parallel group: ``size`` consecutive ranks that drive one engine together.

    vLLM's ``external_launcher`` runs the engine SPMD over the group: every rank of it must submit the same
    prompts, so each rank's rows are gathered within the group (:meth:`gather`) and every rank keeps its own
    share of the outputs (:meth:`split`). ``index``: which group (its engine's seed offset).
    """

    def __init__(self, rank: int = 0, world: int = 1, size: int = 1):
        if world % size:
            raise ConfigError(f"rl.vllm.tensor_parallel_size: expected a divisor of the {world} processes, got {size}")
        self.size, self.rank, self.index, self.world = size, rank % size, rank // size, world
        self.group = None
        if size > 1:  # collective: every rank builds every group, in the same order
            self.group, _ = torch.distributed.new_subgroups_by_enumeration(
                [list(range(g * size, (g + 1) * size)) for g in range(world // size)])

    def gather(self, rows: Sequence) -> tuple[list, list[int]]:
        """Every group rank's rows, concatenated in rank order, and how many each gave."""
        if self.size == 1:
            return list(rows), [len(rows)]
        parts: list = [None] * self.size
        torch.distributed.all_gather_object(parts, list(rows), group=self.group)
        return [r for part in parts for r in part], [len(part) for part in parts]

    def split(self, rows: Sequence, counts: Sequence[int]) -> list:
        """This rank's share of the group's outputs (``counts``: from :meth:`gather`)."""
        start = sum(counts[: self.rank])
        return list(rows[start: start + counts[self.rank]])


_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted max_lora_rank values


class VLLMGenerator(Generator):
    """A vLLM engine colocated with this process (one per process, or one per tensor-parallel group of processes),
    sampling with the policy's current weights.

    ``model`` (a directory or hub name) gives the engine its architecture and tokenizer; the weights it samples
    with are the policy's, pushed at the first wake-up and after every policy step. A step makes one ``generate``
    over all its rows; between steps the engine sleeps (``rl.vllm.sleep_level``) and wakes in TRL's order: the
    weights' memory, the new weights, then the KV cache.
    """

    whole_step = True

    def __init__(self, model: str, policy: nn.Module, eos_token_id: int, pad_token_id: int, device: torch.device,
                 cfg: VLLMConfig = VLLMConfig(), *, max_model_len: int, seed: int = 0,
                 trust_remote_code: bool = False, allow_unsafe_weights: bool = False, tp: Optional[TPGroup] = None):
        vllm = require_vllm(device)
        # The engine core in this process (not a child): weights are then handed over as tensors, not
        # serialised, and collective_rpc runs the loader directly. A user's own setting wins.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.cfg, self.device, self.tp = cfg, device, tp or TPGroup()
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.SamplingParams = vllm.SamplingParams
        self.TokensPrompt = _tokens_prompt_type(vllm)
        self.adapter = LoRAAdapterPush.for_policy(vllm, policy) if cfg.lora_adapter else None
        kwargs = dict(model=model, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                      enforce_eager=cfg.enforce_eager, max_model_len=max_model_len, seed=seed,
                      tensor_parallel_size=self.tp.size, trust_remote_code=trust_remote_code,
                      load_format="auto" if allow_unsafe_weights else "safetensors",
                      enable_sleep_mode=cfg.sleep_level > 0)
        if cfg.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        if self.tp.world > 1:  # this process's torch.distributed world runs the engine, TRL's colocate mode
            kwargs["distributed_executor_backend"] = "external_launcher"
        if self.adapter is not None:
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=self.adapter.max_rank)
        if _engine_arg(vllm, "generation_config"):
            # Sampling and stopping as r2m asks, not as the checkpoint's generation_config.json suggests
            # (its extra eos ids would stop rows that the HF path lets run on).
            kwargs["generation_config"] = "vllm"
        self.llm = vllm.LLM(**kwargs)
        self.policy = policy
        self.stale = True  # the engine holds the checkpoint's weights, not the policy's (resumed, adapter-wrapped)
        self.base_loaded = False  # (adapter push) the engine holds the policy's base weights
        self.asleep = False
        self.syncs = 0  # weight pushes so far
        self.sync_seconds = 0.0  # time spent in them
        if cfg.sleep_level:
            self.release()  # its memory goes back to training until the first rollout
        else:
            self._push()

    # -------------------------------------------------------------- sampling

    def _sampling_params(self, temperature: float, max_new_tokens: int):
        """One SamplingParams for every request: no per-request seed (vLLM's sampler then draws the whole batch
        from the engine's RNG, seeded once per engine)."""
        return self.SamplingParams(n=1, temperature=temperature, max_tokens=max_new_tokens,
                                   stop_token_ids=[self.eos_token_id], **VLLM_NEUTRAL_SAMPLING)

    def generate(self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int,
                 with_logprobs: bool = False, with_hidden: bool = False) -> Generation:
        if with_logprobs or with_hidden:  # RLConfig refuses old_logprobs=generation with vllm
            raise ConfigError("rl.old_logprobs=generation: not with rl.generator=vllm; use rl.old_logprobs=recompute")
        rows, counts = self.tp.gather(prompt_ids)  # (the group's rows: one engine serves the whole group)
        self.wake()
        extra = {"lora_request": self.adapter.request} if self.adapter is not None else {}
        outputs = self.llm.generate([self.TokensPrompt(prompt_token_ids=list(p)) for p in rows],
                                    sampling_params=self._sampling_params(temperature, max_new_tokens),
                                    use_tqdm=False, **extra)
        if len(outputs) != len(rows):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(rows)} prompts")
        responses = self.tp.split([list(o.outputs[0].token_ids) for o in outputs], counts)
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

    # -------------------------------------------------------------- sleep and weights

    def wake(self) -> None:
        """Ready to sample: the weights' memory back, the policy's weights pushed if the engine's are not
        (always after a level-2 sleep, which discards them), then the KV cache (TRL's order: the push never
        competes with the KV cache for memory)."""
        if self.asleep:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # training's cached blocks back to the driver first
            self.llm.wake_up(tags=["weights"])
        if self.stale:
            self._push()
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def release(self) -> None:
        """Generation is over until the next step: the engine sleeps at ``rl.vllm.sleep_level`` (0: stays awake)."""
        level = self.cfg.sleep_level
        if level and not self.asleep:
            self.llm.sleep(level=level)
            self.asleep = True
            if level == 2:  # weights discarded: pushed again at the wake-up
                self.stale, self.base_loaded = True, False

    def sync_weights(self, policy: nn.Module) -> None:
        """The next ``generate`` samples from ``policy``'s weights: pushed now when awake, else at the wake-up."""
        self.policy, self.stale = policy, True
        if not self.asleep:
            self._push()

    def _push(self) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            if self.adapter is None:
                self._load(policy_weights(self.policy))
            else:
                if not self.base_loaded:  # the frozen base, unmerged, under the base model's names
                    self._load(lora_base_weights(self.policy, merge=False))
                self.adapter.write(self.policy)  # a new adapter id: vLLM loads it at the next generate
        self.base_loaded = True
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.stale = False
        self.syncs += 1
        self.sync_seconds += time.perf_counter() - t0
        log.debug("vLLM weights synced in %.3fs", time.perf_counter() - t0)

    def _load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """One ``load_weights`` call over the tensors, streamed when the engine runs in this process."""
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            weights = list(weights)  # an engine in a child process receives them serialised
        if hasattr(self.llm, "collective_rpc"):  # vLLM >= 0.7 (V0 and V1 engines)
            self.llm.collective_rpc(_load_weights_into_worker, args=(weights,))
        else:  # older: the driver worker's model, in this process
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)


class LoRAAdapterPush:
    """A LoRA policy's adapter handed to vLLM as a LoRA adapter (``LoRARequest``): a few MB written per step
    instead of the whole model's merged weights. Only where vLLM can serve it: one active plain LoRA adapter on a
    ``PeftModel``, no DoRA, no ``modules_to_save``, rank <= 512, and a vLLM with LoRA support."""

    def __init__(self, request_type, rank: int):
        import tempfile

        self.request_type, self.request = request_type, None
        self.max_rank = next(r for r in _LORA_RANKS if r >= rank)
        self.dir = tempfile.TemporaryDirectory(prefix="r2m-vllm-lora-")
        self.version = 0

    @classmethod
    def for_policy(cls, vllm, policy: nn.Module) -> Optional["LoRAAdapterPush"]:
        """An adapter push for ``policy``, or None (not LoRA, or not servable: the merged weights are pushed)."""
        pc = getattr(policy, "peft_config", {}).get(getattr(policy, "active_adapter", None))
        if pc is None or not hasattr(policy, "get_base_model") or len(policy.peft_config) != 1:
            return None
        kind = str(getattr(pc.peft_type, "value", pc.peft_type))
        if kind != "LORA" or getattr(pc, "use_dora", False) or pc.modules_to_save or pc.r > _LORA_RANKS[-1]:
            return None
        try:
            from vllm.lora.request import LoRARequest  # heavy: lazy
        except ImportError:
            return None
        return cls(LoRARequest, pc.r) if _engine_arg(vllm, "enable_lora") else None

    def write(self, policy: nn.Module) -> None:
        """The adapter as PEFT saves it (adapter_config.json, adapter_model.safetensors), under a new id."""
        from peft import get_peft_model_state_dict  # heavy: lazy
        from safetensors.torch import save_file

        name = policy.active_adapter
        state = {k: _full(v).detach().contiguous().cpu()
                 for k, v in get_peft_model_state_dict(policy, adapter_name=name).items()}
        policy.peft_config[name].save_pretrained(self.dir.name)
        save_file(state, os.path.join(self.dir.name, "adapter_model.safetensors"))
        self.version += 1  # vLLM caches adapters by id: a new id makes it read the new weights
        self.request = self.request_type(lora_name=f"r2m-policy-{self.version}", lora_int_id=self.version,
                                         lora_path=self.dir.name)


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
    if cfg.rl.generator != "vllm":
        return
    require_vllm(torch.device("cuda" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu"))
    alloc = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if cfg.rl.vllm.sleep_level and re.search(r"expandable_segments\s*:\s*True", alloc):
        # vLLM's sleep mode allocates through its own CUDA memory pool, which expandable segments break.
        raise ConfigError(f"rl.vllm.sleep_level={cfg.rl.vllm.sleep_level}: vLLM's sleep mode cannot run with "
                          f"expandable_segments:True in PYTORCH_CUDA_ALLOC_CONF ({alloc!r}); unset that environment "
                          "variable (or drop expandable_segments from it) or set rl.vllm.sleep_level=0 (docs/VLLM.md)")


def build_generator(cfg: Config, policy_dir: str, policy: nn.Module, tokenizer, device: torch.device,
                    accelerator=None) -> Generator:
    """The run's rollout backend from ``rl.generator``; for vLLM, checks the machine first and builds this
    process's engine (one per tensor-parallel group of ``rl.vllm.tensor_parallel_size`` processes)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    unwrapped = accelerator.unwrap_model(policy) if accelerator is not None else policy
    ignored = inherited_sampling(unwrapped)
    if ignored:
        log.info("the policy's generation config sets %s; r2m samples from softmax(logits / rl.temperature) as its "
                 "log-probs score it, and sets every sampling field itself", ignored)
    if cfg.rl.generator == "hf":
        return HFGenerator(unwrapped, eos, pad, device)  # the unwrapped module: a DDP wrapper has no ``generate``
    require_vllm(device)
    vc = cfg.rl.vllm
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    tp = TPGroup(rank, world, vc.tensor_parallel_size)
    if world > 1:  # what vLLM's external_launcher reads to join this process's torch.distributed world
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(accelerator.local_process_index), WORLD_SIZE=str(world))
    max_len = vc.max_model_len
    if not max_len:
        max_len = cfg.data.max_prompt_tokens + cfg.rl.max_new_tokens
        config = getattr(unwrapped, "config", None)
        text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
        cap = getattr(text, "max_position_embeddings", None)
        if isinstance(cap, int) and cap > 0:
            max_len = min(max_len, cap)
    # One seed per engine: the ranks of a tensor-parallel group sample together and must agree.
    return VLLMGenerator(policy_dir, unwrapped, eos, pad, device, vc, max_model_len=max_len,
                         seed=cfg.run.seed + tp.index,
                         trust_remote_code=cfg.policy.trust_remote_code,
                         allow_unsafe_weights=cfg.run.allow_unsafe_weights, tp=tp)
