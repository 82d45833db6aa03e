"""The over-optimisation monitor's signals on one evaluation's samples (issue 19, item 1; docs/MONITOR.md).

:func:`monitor_signals` takes the evaluation's samples of the policy and of the SFT policy (the step-0
evaluation: the reference is the SFT policy and the evaluation seed is fixed) and returns the label-free
signals of :mod:`r2m.core.monitor` under their ``monitor/*`` keys. None reads the gold reward. What it adds
to an evaluation: one forward pass of the policy and one of the reference over the evaluation samples
(hidden states), and one check-RM scoring pass when a check RM is given; ``time/monitor`` is its cost.

A signal that cannot be computed on these samples (one sample per prompt leaves no within-prompt pair to
rank; no check RM; R2M off) is left out of the metrics and named in :attr:`MonitorReading.missing`, which
the caller logs once per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from r2m.core.monitor import (
    Signal,
    hidden_clustering,
    hidden_drift,
    length_drift,
    mean_pool,
    proxy_gain_per_kl,
    rank_disagreement,
    token_drift,
)
from r2m.errors import DataError
from r2m.eval.policy import PolicySamples
from r2m.experience.rewards import RewardFunction, RewardQuery
from r2m.models.forward import eval_mode, last_states, left_pad
from r2m.utils import device_clock


@dataclass(frozen=True)
class MonitorModels:
    """What the signals read besides the samples."""

    policy: nn.Module
    """The policy being trained (unwrapped)."""
    ref: nn.Module
    """The frozen reference = the SFT policy."""
    pad_token_id: int
    device: torch.device
    samples_per_prompt: int
    """K: the samples are prompt-major groups of K (eval.samples_per_prompt)."""
    check_fn: Optional[RewardFunction] = None
    """The independent check RM (None: monitor/check_disagreement is off)."""
    fused: bool = False
    """R2M is on: samples.proxy is the fused score and samples.vanilla the vanilla RM's."""
    batch_size: int = 64
    """Sequences per forward pass."""


class PreviousEval(NamedTuple):
    """The previous evaluation's mean proxy reward and KL (for the proxy gain per KL)."""

    proxy: float
    kl: float


@dataclass
class MonitorReading:
    metrics: dict[str, float]
    """monitor/* values (finite ones only) and time/monitor, the cost in seconds."""
    missing: dict[str, str] = field(default_factory=dict)
    """Signal key -> why it is not in ``metrics``."""


def _groups(x: torch.Tensor, k: int) -> torch.Tensor:
    """(M,) prompt-major scores -> (M / K, K)."""
    return x.reshape(-1, k)


def _padded(ids: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, T) token ids and their (N, T) mask."""
    width = max(len(r) for r in ids)
    tokens = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, r in enumerate(ids):
        tokens[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = True
    return tokens, mask


@torch.no_grad()
def response_states(model: nn.Module, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                    pad_token_id: int, device: torch.device, batch_size: int = 64) -> torch.Tensor:
    """(N, D) float64 CPU: ``model``'s last-layer states mean-pooled over each response's own tokens."""
    out = []
    with eval_mode(model):
        for s in range(0, len(prompt_ids), batch_size):
            p, r = prompt_ids[s: s + batch_size], response_ids[s: s + batch_size]
            ids, mask = left_pad([list(a) + list(b) for a, b in zip(p, r)], pad_token_id)  # (b, S)
            width = ids.shape[1]
            resp = torch.zeros_like(mask, dtype=torch.bool)  # (b, S): the last len(r_i) columns of row i
            for i, b in enumerate(r):
                resp[i, width - len(b):] = len(b) > 0
            ids, mask = ids.to(device), mask.to(device)
            hidden = last_states(model, ids, mask, torch.Tensor.detach)  # (b, S, D), no logits
            out.append(mean_pool(hidden.float().cpu(), resp))
    return torch.cat(out)


def _check_scores(fn: RewardFunction, samples: PolicySamples, batch_size: int) -> torch.Tensor:
    parts = []
    for s in range(0, len(samples.prompts), batch_size):
        q = RewardQuery(samples.prompts[s: s + batch_size], samples.responses[s: s + batch_size])
        parts.append(fn(q).scores.detach().float().cpu())
    return torch.cat(parts)


def _rank_signals(samples: PolicySamples, models: MonitorModels, out: MonitorReading) -> None:
    k = models.samples_per_prompt
    if k < 2:
        why = "eval.samples_per_prompt=1 leaves no within-prompt pair to rank"
        out.missing.update({Signal.CHECK_DISAGREEMENT.value: why, Signal.FUSED_DISAGREEMENT.value: why})
        return
    if samples.proxy is not None and not bool(torch.isfinite(samples.proxy).all()):
        # The numeric guard's business (guard/*): the ranks of NaN scores mean nothing.
        why = "a proxy score of the evaluation is NaN or infinite"
        out.missing.update({Signal.CHECK_DISAGREEMENT.value: why, Signal.FUSED_DISAGREEMENT.value: why})
        return
    if models.check_fn is None:
        out.missing[Signal.CHECK_DISAGREEMENT.value] = "no check RM (rl.monitor.check_rm)"
    elif samples.proxy is not None:
        d = rank_disagreement(_groups(samples.proxy, k), _groups(_check_scores(models.check_fn, samples,
                                                                               models.batch_size), k))
        out.metrics[Signal.CHECK_DISAGREEMENT.value] = d.value
        out.metrics["monitor/check_pairs"] = float(d.pairs)
    if not models.fused or samples.vanilla is None or samples.proxy is None:
        out.missing[Signal.FUSED_DISAGREEMENT.value] = "R2M is off"
    elif not bool(torch.isfinite(samples.vanilla).all()):
        out.missing[Signal.FUSED_DISAGREEMENT.value] = "a vanilla score of the evaluation is NaN or infinite"
    else:
        out.metrics[Signal.FUSED_DISAGREEMENT.value] = rank_disagreement(_groups(samples.proxy, k),
                                                                         _groups(samples.vanilla, k)).value


def _drift_signals(samples: PolicySamples, sft: PolicySamples, out: MonitorReading, pad: int) -> None:
    ld = length_drift(samples.lengths, sft.lengths)
    out.metrics.update({Signal.LENGTH_REL_CHANGE.value: ld.rel_change, "monitor/length_z": ld.z})
    tokens, mask = _padded(samples.response_ids, pad)  # (N, T)
    sft_tokens, sft_mask = _padded(sft.response_ids, pad)  # (M, T')
    # The JS divergence does not depend on empty bins: the vocabulary up to the largest id seen is enough.
    vocab = 1 + max(int(tokens[mask].max()), int(sft_tokens[sft_mask].max()))
    out.metrics[Signal.TOKEN_JS.value] = token_drift(tokens, mask, sft_tokens, sft_mask, vocab).js


def _hidden_signals(samples: PolicySamples, models: MonitorModels, out: MonitorReading) -> None:
    args = (samples.prompt_ids, samples.response_ids, models.pad_token_id, models.device, models.batch_size)
    states = response_states(models.policy, *args)  # (N, D)
    drift = hidden_drift(states, response_states(models.ref, *args))
    out.metrics.update({Signal.HIDDEN_DRIFT.value: drift.mean, "monitor/hidden_drift_max": drift.max})
    if states.shape[0] < 3:
        out.missing[Signal.HIDDEN_SEPARATION.value] = f"{states.shape[0]} evaluation samples; clustering needs 3"
        return
    # All evaluation responses are clustered together (not per prompt): a hacking mode is shared across
    # prompts, and one or two samples per prompt leave too few within-prompt pairs to average.
    clusters = hidden_clustering(states)
    out.metrics.update({Signal.HIDDEN_SEPARATION.value: clusters.separation,
                        "monitor/hidden_minority_share": clusters.minority_share})


def monitor_signals(samples: PolicySamples, sft: PolicySamples, models: MonitorModels,
                    previous: Optional[PreviousEval] = None) -> MonitorReading:
    """Every signal of :mod:`r2m.core.monitor` on one evaluation (``previous``: the evaluation before it, for
    the proxy gain per KL; None at the first evaluation)."""
    if samples.response_ids is None or sft.response_ids is None or samples.prompt_ids is None:
        raise DataError("monitor_signals: the samples carry no token ids; expected r2m.eval.policy.sample_policy's")
    t0 = device_clock()
    out = MonitorReading({})
    _rank_signals(samples, models, out)
    if previous is not None and samples.proxy is not None:
        g = proxy_gain_per_kl(previous.proxy, samples.proxy.mean().item(), previous.kl, samples.kl)
        out.metrics[Signal.PROXY_GAIN_PER_KL.value] = g.value
    _drift_signals(samples, sft, out, models.pad_token_id)
    _hidden_signals(samples, models, out)
    nan = [k for k, v in out.metrics.items() if not torch.isfinite(torch.tensor(v))]
    for k in nan:  # e.g. no KL growth since the last evaluation: no rate to speak of
        out.missing[k] = "undefined on this evaluation (NaN)"
        del out.metrics[k]
    out.metrics["time/monitor"] = device_clock() - t0
    return out
