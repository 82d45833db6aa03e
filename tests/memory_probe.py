"""A TorchDispatchMode that records every tensor an op allocates: what the memory tests measure on the CPU."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class Allocations(TorchDispatchMode):
    """Shapes, dtypes and bytes of the new storages ops return (views and in-place results of their inputs are
    not allocations and are skipped)."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[tuple[tuple[int, ...], torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.tensors.append((tuple(t.shape), t.dtype, t.untyped_storage().nbytes()))
        return out

    @property
    def largest(self) -> int:
        """Bytes of the largest allocation."""
        return max((b for _, _, b in self.tensors), default=0)

    def with_numel_at_least(self, n: int) -> list[tuple[tuple[int, ...], torch.dtype, int]]:
        return [t for t in self.tensors if torch.Size(t[0]).numel() >= n]
