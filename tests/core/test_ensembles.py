"""r2m.core.ensembles: the ensemble reducers (Coste et al., 2023) and the gold-mixed proxy, on hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from r2m.config.enums import EnsembleMode
from r2m.core.ensembles import (
    ENSEMBLE_REDUCERS,
    EnsembleParams,
    Moments,
    combine_ensemble,
    gold_mixture,
    moments,
    standardize,
)

# Three members' scores of four responses, (M, B) = (3, 4).
SCORES = torch.tensor([[0.7, -0.2, 1.3, 0.0],
                       [0.1, 0.4, 1.0, -0.6],
                       [1.0, -0.5, 0.4, 0.3]])


def test_mean_worst_and_uwo_by_hand() -> None:
    # Column 0: 0.7, 0.1, 1.0 -> mean 0.6, min 0.1; variance ((0.1)² + (0.5)² + (0.4)²)/3 = 0.42/3 = 0.14.
    # Column 1: -0.2, 0.4, -0.5 -> mean -0.1, min -0.5; variance (0.01 + 0.25 + 0.16)/3 = 0.14.
    # Column 2: 1.3, 1.0, 0.4 -> mean 0.9, min 0.4; variance (0.16 + 0.01 + 0.25)/3 = 0.14.
    # Column 3: 0.0, -0.6, 0.3 -> mean -0.1, min -0.6; variance (0.01 + 0.25 + 0.16)/3 = 0.14.
    mean = torch.tensor([0.6, -0.1, 0.9, -0.1])
    torch.testing.assert_close(combine_ensemble(EnsembleMode.MEAN, SCORES), mean)
    torch.testing.assert_close(combine_ensemble("worst", SCORES), torch.tensor([0.1, -0.5, 0.4, -0.6]))
    torch.testing.assert_close(combine_ensemble(EnsembleMode.UWO, SCORES, EnsembleParams(uwo_lambda=0.5)),
                               mean - 0.5 * 0.14)
    torch.testing.assert_close(combine_ensemble(EnsembleMode.UWO, SCORES, EnsembleParams(uwo_lambda=0.0)), mean)


def test_reducers_agree_with_a_loop_over_members() -> None:
    """Each reducer against a plain loop over the members, on random scores."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 33, generator=g) * 0.7 + 0.3
    for b in range(33):
        col = [s[m, b].item() for m in range(5)]
        mu = sum(col) / 5
        var = sum((x - mu) ** 2 for x in col) / 5
        assert combine_ensemble("mean", s)[b].item() == pytest.approx(mu, abs=1e-6)
        assert combine_ensemble("worst", s)[b].item() == pytest.approx(min(col), abs=1e-7)
        assert combine_ensemble("uwo", s, EnsembleParams(1.7))[b].item() == pytest.approx(mu - 1.7 * var, abs=1e-5)
    assert set(ENSEMBLE_REDUCERS) == set(EnsembleMode)


def test_moments_and_standardize() -> None:
    m = moments(torch.tensor([1.0, 2.0, 4.0, 5.0]))  # mean 3, population SD sqrt((4+1+1+4)/4) = sqrt(2.5)
    assert m.mean == pytest.approx(3.0) and m.std == pytest.approx(2.5 ** 0.5)
    torch.testing.assert_close(standardize(torch.tensor([3.0, 5.0]), m), torch.tensor([0.0, 2.0 / 2.5 ** 0.5]))
    with pytest.raises(ValueError, match="not all equal"):
        moments(torch.tensor([0.7, 0.7, 0.7]))
    with pytest.raises(ValueError, match="M >= 1"):
        combine_ensemble("mean", torch.tensor([0.7, 0.2]))


def test_gold_mixture_by_hand() -> None:
    """RM moments (mean 0.2, SD 0.5), gold's (mean 0.7, SD 0.35): gold 0.35 is one SD below its mean, so on the
    RM's scale it is 0.2 - 0.5 = -0.3; λ = 0.25 with RM 0.9: 0.75·0.9 + 0.25·(-0.3) = 0.6."""
    rm, gold = torch.tensor([0.9, -0.1]), torch.tensor([0.35, 1.05])
    rm_m, gold_m = Moments(0.2, 0.5), Moments(0.7, 0.35)
    # Second row: gold 1.05 = mean + 1 SD -> 0.7 on the RM's scale; 0.75·(-0.1) + 0.25·0.7 = 0.1.
    torch.testing.assert_close(gold_mixture(rm, gold, 0.25, rm_m, gold_m), torch.tensor([0.6, 0.1]))
    torch.testing.assert_close(gold_mixture(rm, gold, 1.0, rm_m, gold_m), torch.tensor([-0.3, 0.7]))
    assert gold_mixture(rm, gold, 0.0, rm_m, gold_m) is rm  # λ = 0: the RM itself, bit for bit
    with pytest.raises(ValueError, match="λ"):
        gold_mixture(rm, gold, 1.5, rm_m, gold_m)
