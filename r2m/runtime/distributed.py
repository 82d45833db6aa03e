"""Data parallelism for the RL loop: which prompts a process samples, and the few global statistics.

Under ``accelerate launch`` (or ``torchrun``) with N processes, every process holds a full policy
replica (DDP; ZeRO/FSDP shard it) and samples 1/N of each step's prompts:

    global prompts p_0 .. p_{n-1}   (the same on every rank: one seeded sampler)
    rank r samples p_{r*n/N} .. p_{(r+1)*n/N - 1}, K times each   -> a group never straddles ranks

What must then be *global* to give the single-process result:

- reward normalisation and advantage whitening (REINFORCE++, GAE): computed on the gathered batch,
  each rank keeping its own rows (:meth:`Dist.gather_rows`, :meth:`Dist.local_rows`);
- the loss normalisers (token or sequence counts): all-reduced, and divided by N because DDP
  averages gradients over ranks (:meth:`Dist.share`): sum_r (N * L_r / T) / N = sum_r L_r / T;
- R2M's fusion module and head, which are trained outside DDP: their gradients are averaged
  (:meth:`Dist.average_gradients`), so every rank's copy takes the same step;
- logged metrics, gathered or averaged over ranks; skip decisions, agreed by all ranks.

With one process every method is the identity, so a single-process run is bit-identical to one
that never heard of this module.
"""

from __future__ import annotations

from typing import Iterable

import torch

class Dist:
    """This process's rank among ``num_processes`` data-parallel processes, and the collectives the loop uses."""

    def __init__(self, accelerator=None):
        self.acc = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.num_processes = accelerator.num_processes if accelerator is not None else 1

    @property
    def enabled(self) -> bool:
        return self.num_processes > 1

    # ------------------------------------------------------------------ sharding

    def shard(self, items):
        """This rank's contiguous share of a global list or 1-D tensor (its length must divide by ``num_processes``)."""
        if len(items) % self.num_processes:
            raise ValueError(f"{len(items)} items cannot be split evenly over {self.num_processes} processes")
        n = len(items) // self.num_processes
        part = items[self.rank * n: (self.rank + 1) * n]
        return part if isinstance(items, torch.Tensor) else list(part)

    def local_rows(self, x: torch.Tensor, rows: int, width: int | None = None) -> torch.Tensor:
        """Rows ``[rank*rows, (rank+1)*rows)`` of a gathered tensor, cut back to this rank's ``width``."""
        if not self.enabled:
            return x
        out = x[self.rank * rows: (self.rank + 1) * rows]
        return out[:, :width] if width is not None else out

    # ------------------------------------------------------------------ collectives

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``x`` along dim 0 (rank-major); dim 1 is right-padded with 0 first."""
        if not self.enabled:
            return x
        from accelerate.utils import gather, pad_across_processes

        if x.dim() > 1:
            x = pad_across_processes(x.contiguous(), dim=1, pad_index=0, pad_first=False)
        return gather(x.contiguous())

    def gather_objects(self, items: list) -> list:
        """Every rank's list of picklable ``items``, concatenated rank-major (``items`` itself with one process)."""
        if not self.enabled:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def sum(self, value: float) -> float:
        if not self.enabled:
            return value
        from accelerate.utils import reduce

        return reduce(torch.tensor(float(value), dtype=torch.float64, device=self.acc.device), "sum").item()

    def share(self, count: float) -> float:
        """This rank's share of a global normaliser: sum over ranks of ``count``, divided by ``num_processes``."""
        return self.sum(count) / self.num_processes

    def all(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (a skip decision every rank takes together)."""
        return self.sum(0.0 if flag else 1.0) == 0.0 if self.enabled else flag

    def mean_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Average scalar statistics over ranks (every rank must pass the same keys)."""
        if not self.enabled or not stats:
            return stats
        from accelerate.utils import reduce

        keys = sorted(stats)
        vals = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=self.acc.device)
        vals = reduce(vals, "mean")
        return {k: v for k, v in zip(keys, vals.tolist())}

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Mean of each parameter's gradient over ranks, for modules trained outside DDP (R2M's)."""
        if not self.enabled:
            return
        from accelerate.utils import reduce

        for p in params:
            if p.grad is not None:
                p.grad.copy_(reduce(p.grad, "mean"))

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Copy rank 0's values into every rank's parameters (one starting point for modules outside DDP)."""
        if not self.enabled:
            return
        from accelerate.utils import broadcast

        with torch.no_grad():
            for p in params:
                p.copy_(broadcast(p.data.clone(), from_process=0))


def configure_deepspeed(accelerator, micro_batch: int, max_grad_norm: float) -> None:
    """Give a DeepSpeed engine what accelerate cannot infer without a DataLoader (call before ``prepare``).

    r2m hands each process ``micro_batch`` rows per backward and takes one optimiser step per
    backward; DeepSpeed clips inside its step, at ``max_grad_norm``. A no-op on other backends.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = micro_batch * accelerator.num_processes
    ds["gradient_clipping"] = max_grad_norm


def sharded_state_dict(accelerator, model):
    """The full state dict of a model whose parameters are sharded (FSDP, DeepSpeed ZeRO-3), gathered
    by accelerate; every rank must call this. None where the unwrapped module holds the full weights."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    zero3 = kind == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    if kind != DistributedType.FSDP and not zero3:
        return None
    return accelerator.get_state_dict(model)
