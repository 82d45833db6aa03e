"""Win rates of a policy against a reference from per-example judge outcomes, raw and length-controlled.

An outcome is the judge's verdict on one (policy, reference) pair: 1 = the policy's response wins,
0.5 = tie, 0 = loss, NaN = the judge gave no usable verdict (dropped and counted).

The length-controlled (LC) win rate answers "how often would the policy win if its responses were
as long as the reference's?". It is a logistic regression in the spirit of AlpacaEval 2's LC win
rate (Dubois et al., 2024), reduced to the one-model-against-one-reference case; see
:func:`length_controlled_win_rate` and ``docs/EVAL.md`` for the exact model and how it differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence, Union

import torch

from r2m.data.jsonl import read_sft
from r2m.errors import DataError

if TYPE_CHECKING:  # annotations only: judges imports the world and the models lazily
    from r2m.eval.judges import Judge

WIN, TIE, LOSS = 1.0, 0.5, 0.0

Values = Union[Sequence[float], torch.Tensor]

LC_PHI_L2 = 1e-3
"""L2 strength on the length slope φ (per example: the loss is a mean). Light: it only matters when
the outcomes are separable in length, where the unpenalised φ would run to infinity."""


class WinRate(NamedTuple):
    win_rate: float
    """Mean outcome in [0, 1] (ties count half)."""
    lc_win_rate: float
    """Length-controlled win rate in [0, 1] (:func:`length_controlled_win_rate`)."""
    n: int
    """Pairs with a usable verdict (those the rates are over)."""
    mean_length: float
    """Mean response length of the policy over those pairs."""
    mean_length_ref: float
    """Mean response length of the reference over those pairs."""
    ties: int
    """Pairs judged a tie."""
    invalid: int = 0
    """Pairs dropped because the judge gave no usable verdict (NaN outcome)."""


class JudgedWinRate(NamedTuple):
    summary: WinRate
    outcomes: list[float]
    """(N,) per-pair outcome, NaN where the judge gave no verdict."""


class PairedResponses(NamedTuple):
    prompts: list[str]
    """(N,) prompts, the same for both sides."""
    responses: list[str]
    """(N,) the policy's responses."""
    ref_responses: list[str]
    """(N,) the reference's responses."""


def outcomes_from_scores(scores: Values, ref_scores: Values) -> list[float]:
    """Outcomes from per-response scores: 1 where the policy scores higher, 0.5 on equal, 0 below.

    NaN in either score gives a NaN outcome (no verdict), not a loss.
    """
    a = torch.as_tensor(scores, dtype=torch.float64)  # (N,)
    b = torch.as_tensor(ref_scores, dtype=torch.float64)  # (N,)
    if a.shape != b.shape:
        raise ValueError(f"outcomes_from_scores: expected equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    out = (a > b).double() * WIN + (a == b).double() * TIE
    out[a.isnan() | b.isnan()] = float("nan")
    return out.tolist()


def response_length(text: str) -> int:
    """Default length unit: whitespace-separated words (a token in the gold-reward world)."""
    return len(text.split())


def _vector(values: Values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)  # (N,)


def _inputs(outcomes: Values, len_policy: Values, len_ref: Values, caller: str) -> tuple[torch.Tensor, ...]:
    """(y, len_policy, len_ref) as float64 (N,) vectors, checked."""
    y, lp, lr = _vector(outcomes), _vector(len_policy), _vector(len_ref)
    if not (y.shape == lp.shape == lr.shape):
        raise ValueError(f"{caller}: expected equal lengths, got outcomes {y.numel()}, len_policy {lp.numel()}, "
                         f"len_ref {lr.numel()}")
    valid = y[~y.isnan()]
    if ((valid < 0) | (valid > 1)).any():
        raise ValueError(f"{caller}: expected outcomes in [0, 1] (1 win, 0.5 tie, 0 loss) or NaN")
    return y, lp, lr


def _length_feature(len_policy: torch.Tensor, len_ref: torch.Tensor) -> Optional[torch.Tensor]:
    """tanh(Δ / std(Δ)) with Δ = len_policy - len_ref, or None when Δ does not vary (nothing to adjust)."""
    delta = len_policy - len_ref  # (N,)
    std = delta.std(correction=0) if delta.numel() else torch.tensor(0.0, dtype=torch.float64)
    if not std > 0:
        return None
    return torch.tanh(delta / std)


def _penalised_nll(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    z = w[0] + w[1] * x  # (N,)
    # Fractional-label BCE, written with softplus so that it is stable for any z.
    nll = (torch.nn.functional.softplus(z) - y * z).mean()
    return nll + 0.5 * l2 * w[1] ** 2


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 100) -> torch.Tensor:
    """Damped Newton on (θ, φ) for σ(θ + φx) against fractional labels y; returns w = (θ, φ).

    The objective is strictly convex (φ is penalised, and θ's curvature Σσ'(z) is positive), and its
    minimiser is finite as long as y is not constant, so Newton converges in a handful of steps.
    """
    w = torch.zeros(2, dtype=torch.float64)
    feats = torch.stack([torch.ones_like(x), x], dim=1)  # (N, 2)
    ridge = torch.diag(torch.tensor([0.0, l2], dtype=torch.float64))
    loss = _penalised_nll(w, x, y, l2)
    for _ in range(max_iter):
        p = torch.sigmoid(feats @ w)  # (N,)
        grad = feats.T @ (p - y) / len(y) + ridge @ w  # (2,)
        if grad.abs().max() < 1e-12:
            break
        hess = (feats.T * (p * (1 - p))) @ feats / len(y) + ridge + 1e-12 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10:  # backtracking: a full Newton step can overshoot when σ saturates
            candidate = w - t * step
            cand_loss = _penalised_nll(candidate, x, y, l2)
            if cand_loss <= loss - 1e-4 * t * (grad @ step):
                break
            t *= 0.5
        else:
            break  # no decrease possible at float64 precision: converged
        w, loss = candidate, cand_loss
    return w


def length_controlled_win_rate(outcomes: Values, len_policy: Values, len_ref: Values,
                               phi_l2: float = LC_PHI_L2) -> float:
    """Win rate predicted at zero length difference by a length-only logistic model, in [0, 1].

    Model, per pair i with outcome y_i ∈ {0, 0.5, 1} and length difference Δ_i = len_policy_i - len_ref_i:

        P(win_i) = σ(θ + φ · tanh(Δ_i / s)),   s = std(Δ) (population std over the pairs).

    (θ, φ) maximise the Bernoulli log-likelihood with fractional labels (a tie is the target 0.5 in
    the binary cross-entropy), minus ``phi_l2``/2 · φ² on the mean log-likelihood's scale; the fit is
    damped Newton in float64. The LC win rate is σ(θ): the model's win probability when the two
    responses are equally long. NaN outcomes are dropped first.

    Degenerate cases return the raw win rate exactly: when Δ does not vary (s = 0; in particular
    when all lengths are equal) there is no length effect to remove, and when every outcome is the
    same (e.g. all wins) the penalised maximum-likelihood σ(θ) is that outcome.

    Unlike AlpacaEval 2's GLM this has no instruction-difficulty term and no per-model θ/φ pair
    (one policy against one reference), and ties enter as half labels.
    """
    y, lp, lr = _inputs(outcomes, len_policy, len_ref, "length_controlled_win_rate")
    keep = ~y.isnan()
    y, lp, lr = y[keep], lp[keep], lr[keep]
    if y.numel() == 0:
        return float("nan")
    raw = y.mean().item()
    x = _length_feature(lp, lr)
    if x is None or bool((y == y[0]).all()):
        return raw
    theta = _fit_logistic(x, y, phi_l2)[0]
    return torch.sigmoid(theta).item()


def summarize_win_rate(outcomes: Values, len_policy: Values, len_ref: Values) -> WinRate:
    """:class:`WinRate` of per-pair outcomes (NaN outcomes are dropped and counted as ``invalid``)."""
    y, lp, lr = _inputs(outcomes, len_policy, len_ref, "summarize_win_rate")
    keep = ~y.isnan()
    n = int(keep.sum())
    nan = float("nan")
    return WinRate(
        win_rate=y[keep].mean().item() if n else nan,
        lc_win_rate=length_controlled_win_rate(y, lp, lr),
        n=n,
        mean_length=lp[keep].mean().item() if n else nan,
        mean_length_ref=lr[keep].mean().item() if n else nan,
        ties=int((y[keep] == TIE).sum()),
        invalid=int((~keep).sum()),
    )


def judge_win_rate(judge: "Judge", prompts: Sequence[str], responses: Sequence[str], ref_responses: Sequence[str],
                   len_policy: Optional[Values] = None, len_ref: Optional[Values] = None) -> JudgedWinRate:
    """Judge every (policy, reference) pair and summarise; lengths default to :func:`response_length`."""
    if not (len(prompts) == len(responses) == len(ref_responses)):
        raise ValueError(f"judge_win_rate: expected as many responses as prompts, got {len(prompts)} prompts, "
                         f"{len(responses)} responses, {len(ref_responses)} reference responses")
    outcomes = list(judge.compare(prompts, responses, ref_responses))
    lp = len_policy if len_policy is not None else [response_length(r) for r in responses]
    lr = len_ref if len_ref is not None else [response_length(r) for r in ref_responses]
    return JudgedWinRate(summarize_win_rate(outcomes, lp, lr), outcomes)


def read_paired_responses(policy_path: str | Path, ref_path: str | Path) -> PairedResponses:
    """Two ``{"prompt", "response"}`` JSONL files answering the same prompts in the same order."""

    pol, ref = read_sft(policy_path), read_sft(ref_path)
    if len(pol) != len(ref):
        raise DataError(f"{ref_path}: expected {len(pol)} rows (as in {policy_path}), got {len(ref)}")
    for i, (a, b) in enumerate(zip(pol, ref), start=1):
        if a["prompt"] != b["prompt"]:
            raise DataError(f"{ref_path}: row {i}: prompt differs from row {i} of {policy_path} "
                            f"(both files must answer the same prompts in the same order)")
    return PairedResponses([r["prompt"] for r in pol], [r["response"] for r in pol], [r["response"] for r in ref])


def win_rate_dict(w: WinRate) -> dict[str, float]:
    """JSON-ready metrics (``winrate/...``), NaN kept as NaN."""
    return {f"winrate/{k}": (float(v) if isinstance(v, float) else v) for k, v in w._asdict().items()}
