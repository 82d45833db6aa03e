"""The RL run's setup checks and its prompt order: data-parallel divisibility, the distributed backend, the
shuffled passes over a prompt set (:class:`PromptSampler`) or the passes over a prompt stream (:class:`StreamSampler`).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Optional

import torch

from r2m.config.enums import Algorithm
from r2m.config.root import Config
from r2m.config.training import RLConfig
from r2m.core.kl_control import KLController, make_kl_controller
from r2m.errors import ConfigError, DataError
from r2m.experience.sampling import PromptSet, tokenize_prompts
from r2m.runtime.distributed import configure_deepspeed

log = logging.getLogger("r2m")


def kl_horizon(rl: RLConfig) -> int:
    """The adaptive controller's horizon in samples: ``rl.kl_horizon_batches`` steps' batches (prompts_per_step × k
    samples: ``prompts_per_step`` is the global batch, shared out over the processes), or ``rl.kl_horizon`` samples
    when that is 0. Each step updates the controller once with the global batch's prompts_per_step × k samples, so
    with a horizon of H batches a step moves β by the factor 1 + clip(KL/target − 1, ±0.2) / H, whatever the
    process count."""
    if not rl.kl_horizon_batches:
        return rl.kl_horizon
    return max(1, round(rl.kl_horizon_batches * rl.prompts_per_step * rl.k))


def kl_controller(rl: RLConfig) -> KLController:
    """The run's β: fixed, or adaptive towards ``rl.kl_target`` (in ``rl.kl_target_level``'s units) over
    :func:`kl_horizon` samples."""
    return make_kl_controller(rl.beta, rl.kl_adaptive, rl.kl_target, kl_horizon(rl))



class PromptSampler:
    """Walks the prompt set in shuffled passes; ``position`` is the number of prompts consumed."""

    max_prompt_len = 0  # the prompts are all known: the run measures them

    def __init__(self, n: int, seed: int, prompts: Optional[PromptSet] = None):
        self.n, self.seed, self.position, self.prompts = n, seed, 0, prompts

    def take(self, count: int) -> tuple[list[str], list[list[int]]]:
        """The next ``count`` prompts' texts and token ids."""
        idx = self.next(count)
        return [self.prompts.texts[i] for i in idx], [self.prompts.ids[i] for i in idx]

    def counts(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]

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


class StreamSampler:
    """Takes prompts from a stream as they are needed (an ``IterableDataset``, or data.streaming): nothing needs its
    length. An epoch is one pass over the stream; at its end the stream is opened again for the next epoch (an
    ``IterableDataset`` is told the epoch, so that one shuffled with a buffer reshuffles; r2m does not reorder a
    stream). ``position`` counts the prompts consumed; ``epoch`` and ``offset`` (prompts read in this epoch,
    over-long skipped ones included) are where a resumed run continues."""

    def __init__(self, open_epoch: Callable[[int], Iterator[str]], tokenizer, max_tokens: int, overlong: str):
        self.open_epoch, self.tok, self.max_tokens, self.overlong = open_epoch, tokenizer, max_tokens, overlong
        self.max_prompt_len = max_tokens  # a bound: the stream's prompts are not known ahead
        self.position = self.epoch = self.offset = self.truncated = self.skipped = 0
        self._it: Optional[Iterator[str]] = None
        self._kept = 0  # prompts kept in this epoch

    def peek(self, n: int) -> PromptSet:
        """The first ``n`` prompts of the stream (its own pass; nothing is consumed), for the run's checks."""
        it, texts = self.open_epoch(0), []
        for text in it:
            texts.append(text)
            if len(texts) == n:
                break
        return tokenize_prompts(self.tok, texts, self.max_tokens, self.overlong)

    def _next_text(self) -> str:
        while True:
            if self._it is None:
                self._it = self.open_epoch(self.epoch)
                for _ in range(self.offset):  # a resumed run: past the prompts this epoch had given
                    next(self._it, None)
            text = next(self._it, None)
            if text is not None:
                self.offset += 1
                return text
            if self._kept == 0 and self.offset == 0:
                raise DataError("the prompt stream gave no prompt in a whole pass (data.prompts)")
            if self._kept == 0:
                raise DataError(f"every prompt of a pass over the stream is longer than data.max_prompt_tokens="
                                f"{self.max_tokens} and data.overlong=skip; no prompt is left")
            log.info("prompt stream: epoch %d ended after %d prompts; epoch %d begins", self.epoch, self.offset,
                     self.epoch + 1)
            self.epoch, self.offset, self._it, self._kept = self.epoch + 1, 0, None, 0

    def take(self, count: int) -> tuple[list[str], list[list[int]]]:
        """The next ``count`` prompts' texts and token ids (over-long ones cut or skipped per data.overlong)."""
        texts, ids = [], []
        while len(texts) < count:
            got = tokenize_prompts(self.tok, [self._next_text() for _ in range(count - len(texts))],
                                   self.max_tokens, self.overlong)
            self.truncated, self.skipped = self.truncated + got.truncated, self.skipped + got.skipped
            self._kept += len(got.texts)
            texts, ids = texts + got.texts, ids + got.ids
        self.position += count
        return texts, ids

    def counts(self) -> dict[str, float]:
        """What the stream gave so far: its prompts cut or skipped for length, and the epoch."""
        return {"data/prompts_truncated": self.truncated, "data/prompts_skipped": self.skipped,
                "prompts/epoch": self.epoch}

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch, "offset": self.offset, "truncated": self.truncated,
                "skipped": self.skipped, "kept": self._kept}

    def load_state_dict(self, state: dict) -> None:
        if "epoch" not in state:
            raise DataError("the checkpoint was written with a prompt set, and the prompts are now a stream "
                            "(data.streaming, an IterableDataset); resume with the same kind of prompts")
        self.position, self.epoch, self.offset = state["position"], state["epoch"], state["offset"]
        self.truncated, self.skipped, self._kept, self._it = state["truncated"], state["skipped"], state["kept"], None


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
    DeepSpeed LoRA is refused (the final merge would copy a sharded model); fp16 with PPO is refused (one gradient
    scaler, two optimisers).
    """
    rl = cfg.rl
    from accelerate.utils import DistributedType

    sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
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
