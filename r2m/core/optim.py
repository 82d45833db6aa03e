"""The policy/critic AdamW from ``rl.optimizer_impl`` (issue 18).

``auto`` leaves torch to choose (today's behaviour: a per-tensor loop on CPU, ``foreach`` on CUDA).
On CPU in torch 2.13, ``foreach=True`` gives bit-identical parameters to the loop (tests/core/test_optim.py)
and ``fused=True`` differs by float rounding (about 1e-7 after a few steps), hence not the default.
"""

from __future__ import annotations

from typing import Iterable

import torch

from r2m.config import OptimizerImpl


def adamw(params: Iterable[torch.nn.Parameter], lr: float, impl: OptimizerImpl = OptimizerImpl.AUTO,
          weight_decay: float = 0.01) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the implementation ``impl``; the other arguments as torch's."""
    kwargs = {OptimizerImpl.AUTO: {}, OptimizerImpl.FOREACH: {"foreach": True},
              OptimizerImpl.FUSED: {"fused": True}}[impl]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)
