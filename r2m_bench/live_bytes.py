"""Exact byte counts of live tensors, per phase, for real tensors and for fake (shape-only) ones.

:class:`LiveBytes` is a ``TorchDispatchMode``: every op run while it is active passes through it, and every
tensor storage an op creates is counted (``storage.nbytes()``) until that storage is freed (a weak-reference
finaliser on the storage). It counts what PyTorch allocates, op by op, not what a process holds: no allocator
rounding, fragmentation or cache, and no workspace a fused kernel allocates inside itself. Views and in-place
results share their input's storage and count nothing; nor do outputs the op's schema marks as aliases.

Fake tensors (``torch._subclasses.fake_tensor``) carry shapes, dtypes and storages without data, so a pass at a
real model's width and real sequence lengths is counted exactly with no memory and almost no compute. Code that
reads values from a fake tensor gets placeholders: ``.item()`` (and ``bool``, ``float``) gives 1,
``torch.allclose`` and ``torch.equal`` give True (a check that compares two passes passes), and
``torch.multinomial`` gives a real tensor of ``token_id`` (so sampling loops run to their length limit and the
sampled ids can be decoded); a fake tensor indexed by a real boolean mask is indexed by the mask's integer
positions instead (the same selection). Nothing else is substituted.

Storages whose tensor has the shape of a parameter (``param_shapes``: gradients, optimiser state, weight casts)
count as ``param``; every other storage as ``act``. Phases (:meth:`LiveBytes.phase`) may nest; within a phase,
peaks are kept per *segment*, the span of time when one tagged module's forward runs (``"policy"``) or has last
run (``"after policy"``), set by the hooks of :meth:`LiveBytes.tag`: a phase's peak is the largest of its
segments', and within one segment the peak grows by a fixed amount per layer of each model, which lets a caller
fit it on depth even where the largest segment changes with depth.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
_DEVICE = torch.ops.prim.device.default
_PLACEHOLDER = {True: 1.0, False: 1}  # .item() of a fake tensor: floating point or not
_COMPARISONS = (aten.allclose.default, aten.equal.default)  # bool of two tensors' values: True on fake ones


@dataclass
class Peak:
    """The highest live bytes seen in one (phase, segment)."""

    total: int = 0
    """max over time of act + param."""
    act: int = 0
    """max over time of act alone."""


@dataclass
class Counts:
    act: int = 0
    param: int = 0
    storages: dict[int, tuple[int, str]] = field(default_factory=dict)
    """storage id -> (bytes, kind) of every counted storage still alive."""


def _is_fake(x) -> bool:
    return isinstance(x, FakeTensor)


_MASK_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


def _integer_indices(indices: list) -> list:
    """A real boolean mask among ``indices`` as the integer indices of its true entries: the same selection, and
    a shape a fake tensor can compute (it cannot count the true entries of a mask it has no values of)."""
    out = []
    for idx in indices:
        if idx is not None and idx.dtype == torch.bool and not _is_fake(idx):
            out.extend(idx.nonzero().unbind(1))
        else:
            out.append(idx)
    return out


class LiveBytes(TorchDispatchMode):
    """Counts live storage bytes op by op; see the module docstring."""

    def __init__(self, param_shapes: Iterable[tuple[int, ...]] = (), token_id: int = 0,
                 fake: Optional[FakeTensorMode] = None):
        super().__init__()
        self.fake = fake
        self.param_shapes = {tuple(s) for s in param_shapes}
        self.token_id = token_id
        self.counts = Counts()
        self.peaks: dict[tuple[str, str], Peak] = {}
        self.open: list[str] = []
        self.segment = "-"

    # ------------------------------------------------------------------ counting

    def _free(self, key: int) -> None:
        nbytes, kind = self.counts.storages.pop(key, (0, "act"))
        setattr(self.counts, kind, getattr(self.counts, kind) - nbytes)

    def _count(self, t: torch.Tensor, inputs: set[int]) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in inputs or key in self.counts.storages:
            return
        kind = "param" if tuple(t.shape) in self.param_shapes else "act"
        nbytes = st.nbytes()
        self.counts.storages[key] = (nbytes, kind)
        setattr(self.counts, kind, getattr(self.counts, kind) + nbytes)
        weakref.finalize(st, self._free, key)

    def _retag(self, t: torch.Tensor) -> None:
        """A view with a parameter's shape over all of an ``act`` storage (a bias gradient summed with keepdim and
        viewed): the storage is a gradient, ``param``."""
        key = t.untyped_storage()._cdata
        nbytes, kind = self.counts.storages.get(key, (0, "param"))
        if kind == "act" and tuple(t.shape) in self.param_shapes and t.numel() * t.element_size() == nbytes:
            self.counts.storages[key] = (nbytes, "param")
            self.counts.act, self.counts.param = self.counts.act - nbytes, self.counts.param + nbytes

    def _record(self) -> None:
        c = self.counts
        for name in self.open:
            p = self.peaks.setdefault((name, self.segment), Peak())
            p.total, p.act = max(p.total, c.act + c.param), max(p.act, c.act)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _DEVICE:  # metadata: no storage (and the most frequent call on fake tensors)
            return func(*args, **kwargs)
        clear_memo(self.fake)
        if func is aten._local_scalar_dense.default and _is_fake(args[0]):
            return _PLACEHOLDER[args[0].dtype.is_floating_point]
        if func in _COMPARISONS and any(_is_fake(a) for a in args[:2]):
            return True
        if func in _MASK_INDEXED and _is_fake(args[0]):
            args = (args[0], _integer_indices(args[1]), *args[2:])
        out = func(*args, **kwargs)
        if func is aten.multinomial.default and _is_fake(out):
            out = torch.full(out.shape, self.token_id, dtype=out.dtype)
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        inputs = {t.untyped_storage()._cdata for t in leaves}
        aliases = [r.alias_info is not None for r in func._schema.returns]
        results = out if isinstance(out, (tuple, list)) else (out,)
        for i, r in enumerate(results):
            alias = i < len(aliases) and aliases[i]
            for t in tree_leaves(r):
                if isinstance(t, torch.Tensor):
                    self._retag(t) if alias else self._count(t, inputs)
        self._record()
        clear_memo(self.fake)  # after it too: autograd takes a gradient as .grad only when nothing else holds it
        return out

    # ------------------------------------------------------------------ phases and segments

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Peaks of the code inside are kept under ``name`` (and under every phase around it)."""
        self.open.append(name)
        self.segment = "-"
        self._record()
        try:
            yield
        finally:
            self.open.pop()

    def tag(self, module: nn.Module, name: str) -> None:
        """Segments: while ``module`` runs, segment ``name``; after it returns, ``after name``."""

        def enter(*_):
            self.segment = name

        def leave(*_):
            self.segment = f"after {name}"

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)

    def phase_peak(self, name: str) -> Peak:
        """The peak of ``name`` over all its segments."""
        seg = [p for (ph, _), p in self.peaks.items() if ph == name]
        return Peak(max((p.total for p in seg), default=0), max((p.act for p in seg), default=0))

    def segments(self, name: str) -> dict[str, Peak]:
        return {s: p for (ph, s), p in self.peaks.items() if ph == name}


def fake_mode() -> FakeTensorMode:
    """A ``FakeTensorMode`` whose fake parameters can be moved and cast, and where real tensors may meet fake ones
    (they are converted).

    Its converter memoises every fake tensor it makes (meta tensor -> fake twin) with a weak reference, and
    ``nn.Module.to``/``float`` swap fake parameters, which a tensor with a weak reference refuses. The memo is
    made a plain dict instead; it is only read while one conversion runs, so :func:`clear_memo` may empty it at
    any time between ops (:class:`LiveBytes` does before each op: the memo must not keep a freed tensor alive).
    A deep copy of a fake tensor (``copy.deepcopy`` of a fake module) shares the mode instead of copying it."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    mode.fake_tensor_converter.meta_converter.tensor_memo = {}
    mode.__deepcopy__ = lambda memo: mode
    return mode


def clear_memo(mode: Optional[FakeTensorMode]) -> None:
    if mode is not None:
        mode.fake_tensor_converter.meta_converter.tensor_memo.clear()


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights count once), real or fake."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())
