"""rl.optimizer_impl: auto is torch's default AdamW; foreach is bit-identical to it on CPU; fused is close."""

from __future__ import annotations

import pytest
import torch

from r2m.config import OptimizerImpl
from r2m.core.optim import adamw


def _train(impl=None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.7) for s in [(16, 8), (8,), (33, 5)]]
    opt = adamw(params, 1e-2, impl, weight_decay=0.0) if impl else torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn_like(p) * 0.7
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("impl", [OptimizerImpl.AUTO, OptimizerImpl.FOREACH])
def test_auto_and_foreach_are_bit_identical_to_torch_default(impl) -> None:
    assert all(torch.equal(a, b) for a, b in zip(_train(), _train(impl)))


def test_fused_is_close() -> None:
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(_train(), _train(OptimizerImpl.FUSED)))


def test_weight_decay_default_is_torch_s() -> None:
    opt = adamw([torch.nn.Parameter(torch.zeros(2))], 1e-3)
    assert opt.param_groups[0]["weight_decay"] == torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]).defaults[
        "weight_decay"]
