"""rl.optimizer_impl (issue 18): auto is torch's default AdamW; foreach is bit-identical to it on CPU (torch 2.13);
fused differs by rounding only."""

from __future__ import annotations

import pytest
import torch

from r2m.config.enums import OptimizerImpl


def _train(impl=None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.7) for s in [(16, 8), (8,), (33, 5)]]
    kwargs = impl.torch_kwargs if impl else {}
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0, **kwargs)
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


def test_the_rl_run_builds_its_optimiser_from_the_field(tiny, world_artifacts) -> None:
    from r2m.config.parsing import load_config
    from r2m.recipes.rl.build import build_run

    run = build_run(load_config(None, [*tiny, "run.name=optimizer-impl", "rl.optimizer_impl=foreach"]))
    group = run.optimizer.param_groups[0]
    assert group["foreach"] is True and not group["fused"] and group["weight_decay"] == 0.0
