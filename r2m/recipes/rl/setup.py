"""The RL run's setup checks and its prompt order: data-parallel divisibility, the distributed backend,
the shuffled passes over the prompt set."""

from __future__ import annotations

import logging

import torch

from r2m.config import Algorithm, Config, RLConfig
from r2m.runtime.distributed import configure_deepspeed
from r2m.errors import ConfigError

log = logging.getLogger("r2m")



class PromptSampler:
    """Walks the prompt set in shuffled passes; ``position`` is the number of prompts consumed."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.position = n, seed, 0

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
    DeepSpeed, resuming and LoRA are refused (rank 0 alone writes checkpoints; the final merge would copy
    a sharded model); fp16 with PPO is refused (one gradient scaler, two optimisers).
    """
    rl = cfg.rl
    from accelerate.utils import DistributedType

    sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded and cfg.run.resume == "auto":
        raise ConfigError(f"run.resume=auto under {acc.distributed_type.value}: r2m's checkpoints hold rank 0's optimiser "
                          "shard only, so a sharded run cannot resume yet; resume under DDP (one process or many), "
                          "or start a new run.name (checkpoints/*/policy hold the full policy weights)")
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
