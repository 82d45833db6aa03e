"""Label-free over-optimisation signals and the alarm rule that combines them (issue 19, items 1-2).

Each signal is a pure function of what an evaluation already has -- the evaluation responses, their scores,
hidden states and KL -- and of the SFT policy's counterpart (the reference model is the SFT policy, and the
evaluation at step 0 is the SFT policy's). None reads the gold reward. Logged under the keys of
:class:`Signal`:

* ``monitor/check_disagreement`` -- :func:`rank_disagreement` of the proxy RM and an independent check RM on
  the same responses (the ensemble-disagreement signal: the policy exploits the proxy's errors, which an
  RM trained on other data does not share, so their rankings part);
* ``monitor/proxy_gain_per_kl`` -- :func:`proxy_gain_per_kl` between consecutive evaluations (Gao et al.'s
  proxy curve flattens per unit of KL once gold has turned);
* ``monitor/length_rel_change`` and ``monitor/token_js`` -- :func:`length_drift` and :func:`token_drift`
  from the SFT policy's samples (length and unigram hacks);
* ``monitor/hidden_drift`` -- :func:`hidden_drift`: the policy's hidden states on the evaluation responses
  vs the SFT policy's on the same responses (R2M Figure 9b);
* ``monitor/hidden_separation`` -- :func:`hidden_clustering`: R2M Table 5 without labels. Table 5 reports the
  mean pairwise cosine similarity of mean-pooled last-layer states within hacking responses (0.67), within
  normal ones (0.75) and across (0.45). Online there are no labels, so the responses are split into two
  clusters by spherical 2-means and the same three means are taken over the clusters; the signal is
  separation = (pooled within-cluster similarity) - (cross-cluster similarity). When a hacking mode appears,
  it forms its own cluster and the separation rises above its value at the SFT policy;
* ``monitor/fused_disagreement`` -- :func:`rank_disagreement` of R2M's fused score and the vanilla score of
  the same responses (only when R2M is on): how far the policy-feedback term reorders the vanilla RM.

The alarm (:func:`first_alarm`; thresholds and rule in ``rl.monitor``, :class:`~r2m.config.monitor.MonitorConfig`).
With history h_0..h_{n-1}, one dict of signal values per evaluation (h_0 = the SFT policy), each signal s with a
threshold t_s "trips" at evaluation i by its :class:`Rule`:

* ABOVE (token_js, hidden_drift): h_i[s] >= t_s -- already measured against the SFT policy;
* ABS_ABOVE (length_rel_change): |h_i[s]| >= t_s -- longer or shorter;
* RISE (check_disagreement, hidden_separation, fused_disagreement): h_i[s] - h_b[s] >= t_s, with b the
  first evaluation where s is finite (its baseline);
* FALLS_TO (proxy_gain_per_kl): h_i[s] <= t_s * h_b[s], only when h_b[s] > 0 (a run whose proxy did not
  rise at first gives this signal nothing to fall from).

A signal missing from h_i, None or NaN does not trip; a threshold of None turns the signal off. The alarm
fires at the first i >= ``warmup`` such that at each of the evaluations i - patience + 1 .. i (all >=
``warmup``) at least ``min_signals`` signals trip; ``onset`` = i - patience + 1, so the last checkpoint
before the alarm is the one of evaluation onset - 1. The default thresholds are ``rl.monitor``'s, set from the
alarm's validation in the gold-reward world (docs/MONITOR.md).
"""

from __future__ import annotations

import enum
import math
from typing import Mapping, NamedTuple, Optional, Sequence

import torch

from r2m.config.monitor import THRESHOLD_OF, MonitorConfig
from r2m.errors import DataError


class RankDisagreement(NamedTuple):
    """Pairwise rank disagreement of two scorings within groups."""

    value: float
    """discordant / pairs in [0, 1]: 0 same order, about 0.5 unrelated, 1 reversed (NaN when pairs = 0)."""
    discordant: int
    pairs: int
    """Pairs (i < j, same group, both valid) that neither scoring ties."""


def rank_disagreement(a: torch.Tensor, b: torch.Tensor, mask: Optional[torch.Tensor] = None) -> RankDisagreement:
    """Share of within-group response pairs that two scorings order differently.

    With a, b of shape (G, K) (K responses to each of G prompts) and pairs i < j of the same group, both valid:

        value = #{(i, j): sign(a_i - a_j) * sign(b_i - b_j) < 0} / #{(i, j): sign(a_i - a_j) * sign(b_i - b_j) != 0}

    i.e. (1 - Kendall's tau) / 2 on the pairs tied in neither scoring, pooled over groups. Only orders within
    a prompt are compared, as the policy-gradient baselines do. Used for proxy vs check RM and for R2M's fused
    vs vanilla score.
    """
    if a.shape != b.shape or a.dim() != 2:
        raise DataError(f"rank_disagreement: scores of shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                        "expected two (G, K) tensors of the same shape")
    if mask is not None and mask.shape != a.shape:
        raise DataError(f"rank_disagreement: mask of shape {tuple(mask.shape)}; expected {tuple(a.shape)}")
    valid = torch.ones_like(a, dtype=torch.bool) if mask is None else mask.bool()  # (G, K)
    if not bool(torch.isfinite(a[valid]).all() & torch.isfinite(b[valid]).all()):
        raise DataError("rank_disagreement: a score of a valid response is NaN or infinite; expected finite scores")
    k = a.shape[1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=a.device), diagonal=1)  # (K, K): i < j
    both = valid[:, :, None] & valid[:, None, :] & upper  # (G, K, K)
    sa = torch.sign(a[:, :, None].double() - a[:, None, :].double())  # (G, K, K)
    sb = torch.sign(b[:, :, None].double() - b[:, None, :].double())
    prod = sa * sb
    pairs = int((both & (prod != 0)).sum())
    discordant = int((both & (prod < 0)).sum())
    return RankDisagreement(discordant / pairs if pairs else float("nan"), discordant, pairs)


class GainPerKL(NamedTuple):
    value: float
    """d_proxy / d_kl; NaN when d_kl < min_kl_step (the KL did not grow: no rate to speak of)."""
    d_proxy: float
    d_kl: float


def proxy_gain_per_kl(proxy_prev: float, proxy_cur: float, kl_prev: float, kl_cur: float,
                      min_kl_step: float = 1e-6) -> GainPerKL:
    """(proxy_cur - proxy_prev) / (kl_cur - kl_prev) between two consecutive evaluations (mean proxy reward
    and mean KL(pi || pi_ref) on the evaluation prompts)."""
    d_proxy, d_kl = proxy_cur - proxy_prev, kl_cur - kl_prev
    return GainPerKL(d_proxy / d_kl if d_kl >= min_kl_step else float("nan"), d_proxy, d_kl)


class LengthDrift(NamedTuple):
    mean: float
    sft_mean: float
    rel_change: float
    """mean / sft_mean - 1 (NaN when sft_mean = 0)."""
    z: float
    """(mean - sft_mean) / sft_std, population std of the SFT lengths (NaN when it is 0)."""


def length_drift(lengths: torch.Tensor, sft_lengths: torch.Tensor) -> LengthDrift:
    """Response-length drift of the policy's samples (N,) from the SFT policy's samples (M,), in tokens."""
    if lengths.numel() == 0 or sft_lengths.numel() == 0:
        raise DataError("length_drift: no lengths; expected at least one response on each side")
    x, y = lengths.double().flatten(), sft_lengths.double().flatten()
    mean, sft_mean, sft_std = x.mean().item(), y.mean().item(), y.std(correction=0).item()
    rel = mean / sft_mean - 1 if sft_mean != 0 else float("nan")
    z = (mean - sft_mean) / sft_std if sft_std > 0 else float("nan")
    return LengthDrift(mean, sft_mean, rel, z)


def unigram_distribution(tokens: torch.Tensor, mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(V,) frequencies of the token ids of tokens (N, T) where mask (N, T) is true (response tokens)."""
    ids = tokens[mask.bool()].long()  # (n_tokens,)
    if ids.numel() == 0:
        raise DataError("unigram_distribution: the mask selects no token")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise DataError(f"unigram_distribution: token ids span [{int(ids.min())}, {int(ids.max())}]; "
                        f"expected ids in [0, vocab_size={vocab_size})")
    counts = torch.bincount(ids, minlength=vocab_size).double()  # (V,)
    return counts / counts.sum()


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> float:
    """JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2, m = (p + q) / 2, in nats; in [0, ln 2], finite on any
    support (xlogy: 0 log 0 = 0)."""
    p, q = p.double(), q.double()
    m = (p + q) / 2
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum()
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum()
    return max(0.0, (0.5 * (kl_pm + kl_qm)).item())  # max: rounding can give -1e-17


class TokenDrift(NamedTuple):
    js: float
    """JS divergence (nats) of the unigram distributions of the policy's and the SFT policy's responses."""
    n_tokens: int
    n_sft_tokens: int


def token_drift(tokens: torch.Tensor, mask: torch.Tensor, sft_tokens: torch.Tensor, sft_mask: torch.Tensor,
                vocab_size: int) -> TokenDrift:
    """Unigram drift: JS(freq(policy response tokens), freq(SFT response tokens)); tokens (N, T), (M, T')."""
    p = unigram_distribution(tokens, mask, vocab_size)
    q = unigram_distribution(sft_tokens, sft_mask, vocab_size)
    return TokenDrift(js_divergence(p, q), int(mask.bool().sum()), int(sft_mask.bool().sum()))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, D) float64 mean of hidden (N, T, D) over the positions where mask (N, T) is true (R2M App. G.1's
    average token hidden state); a row with no valid position is refused."""
    w = mask.double().unsqueeze(-1)  # (N, T, 1)
    n = w.sum(dim=1)  # (N, 1)
    if bool((n == 0).any()):
        raise DataError(f"mean_pool: rows {torch.nonzero(n[:, 0] == 0).flatten().tolist()} have no valid position")
    return (hidden.double() * w).sum(dim=1) / n


def _cos_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) cosine of matching rows of x, y (N, D)."""
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    yn = torch.nn.functional.normalize(y.double(), dim=-1)
    return (xn * yn).sum(-1).clamp(-1.0, 1.0)


class HiddenDrift(NamedTuple):
    mean: float
    """(1/N) sum_i (1 - cos(h_i, h_i^sft))."""
    max: float
    """max_i (1 - cos(h_i, h_i^sft))."""


def hidden_drift(states: torch.Tensor, sft_states: torch.Tensor) -> HiddenDrift:
    """Cosine distance of the policy's and the SFT policy's pooled states on the SAME responses, (N, D) each:
    R2M Figure 9b (one query-response through the policy at different steps), averaged over responses."""
    if states.shape != sft_states.shape or states.dim() != 2:
        raise DataError(f"hidden_drift: states of shapes {tuple(states.shape)} and {tuple(sft_states.shape)}; "
                        "expected two (N, D) tensors of the same responses")
    d = 1 - _cos_rows(states, sft_states)  # (N,)
    return HiddenDrift(d.mean().item(), d.max().item())


def centroid_drift(states: torch.Tensor, sft_states: torch.Tensor) -> float:
    """1 - cos(c, c_sft), c = mean of the unit rows of states (N, D), c_sft of sft_states (M, D): for the
    policy's and the SFT policy's OWN responses (unpaired)."""
    c = torch.nn.functional.normalize(states.double(), dim=-1).mean(0, keepdim=True)  # (1, D)
    c_sft = torch.nn.functional.normalize(sft_states.double(), dim=-1).mean(0, keepdim=True)
    return (1 - _cos_rows(c, c_sft)).item()


def two_means(states: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """(N,) bool cluster labels of spherical 2-means on the unit rows of states (N, D), deterministic.

    Init: seed A = the row least similar to the mean direction, seed B = the row least similar to A (first
    index on ties). Then alternately assign each row to the centroid of higher cosine (A on ties) and set each
    centroid to its rows' normalised mean, until the labels stop changing or ``iters`` rounds. True = B.
    """
    x = torch.nn.functional.normalize(states.detach().double().cpu(), dim=-1)  # (N, D); small: CPU is fine
    mean = torch.nn.functional.normalize(x.mean(0), dim=0)  # (D,)
    a = int(torch.argmin(x @ mean))
    b = int(torch.argmin(x @ x[a]))
    centroids = torch.stack([x[a], x[b]])  # (2, D)
    labels = torch.zeros(x.shape[0], dtype=torch.bool)
    for _ in range(iters):
        sims = x @ centroids.T  # (N, 2)
        new = sims[:, 1] > sims[:, 0]
        if bool((new == labels).all()):
            break
        labels = new
        for c in (0, 1):
            rows = x[labels == bool(c)]
            if rows.shape[0]:
                centroids[c] = torch.nn.functional.normalize(rows.mean(0), dim=0)
    return labels


class HiddenClusters(NamedTuple):
    """Table 5's three mean similarities over two label-free clusters (NaN where a category has no pair)."""

    within_a: float
    within_b: float
    within: float
    """All same-cluster pairs pooled."""
    cross: float
    separation: float
    """within - cross: the signal."""
    minority_share: float
    """Share of the responses in the smaller cluster."""
    labels: torch.Tensor
    """(N,) bool, from :func:`two_means`."""


def _mean_or_nan(values: torch.Tensor) -> float:
    return values.mean().item() if values.numel() else float("nan")


def hidden_clustering(states: torch.Tensor, groups: Optional[torch.Tensor] = None,
                      rescale: bool = True) -> HiddenClusters:
    """R2M Table 5 computed online, without labels, on pooled states (N, D), N >= 3.

    Labels come from :func:`two_means`. Over unique pairs i < j (of the same group when ``groups`` (N,) is
    given, as the paper compares responses to one query), with s_ij = cos(h_i, h_j), or (cos + 1) / 2 when
    ``rescale`` (the paper's scale, as r2m.eval.analysis uses): within_a / within_b = mean s_ij over pairs in
    cluster A / B, within = over both pooled, cross = over pairs split by the clusters, separation =
    within - cross. Pooling the states over the response tokens only keeps the prompt's content out.
    The separation is highest while hacking and normal responses coexist; once every response hacks, one
    cluster is left and it falls back (``minority_share`` shows which), so the alarm reads its rise.
    """
    n = states.shape[0]
    if states.dim() != 2 or n < 3:
        raise DataError(f"hidden_clustering: states of shape {tuple(states.shape)}; expected (N, D) with N >= 3")
    labels = two_means(states)  # (N,) on the CPU, as everything below
    x = torch.nn.functional.normalize(states.detach().double().cpu(), dim=-1)
    sim = (x @ x.T).clamp(-1.0, 1.0)  # (N, N)
    sim = (sim + 1) / 2 if rescale else sim
    pair = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # (N, N)
    if groups is not None:
        if groups.shape != (n,):
            raise DataError(f"hidden_clustering: groups of shape {tuple(groups.shape)}; expected ({n},)")
        groups = groups.cpu()
        pair &= groups[:, None] == groups[None, :]
    in_b = labels[:, None] & labels[None, :]
    in_a = ~labels[:, None] & ~labels[None, :]
    within = _mean_or_nan(sim[pair & (in_a | in_b)])
    cross = _mean_or_nan(sim[pair & ~(in_a | in_b)])
    share = min(int(labels.sum()), n - int(labels.sum())) / n
    return HiddenClusters(_mean_or_nan(sim[pair & in_a]), _mean_or_nan(sim[pair & in_b]), within, cross,
                          within - cross, share, labels)


class Signal(str, enum.Enum):
    """The monitor's signals; the value is the metrics key of the history rows."""

    CHECK_DISAGREEMENT = "monitor/check_disagreement"
    PROXY_GAIN_PER_KL = "monitor/proxy_gain_per_kl"
    LENGTH_REL_CHANGE = "monitor/length_rel_change"
    TOKEN_JS = "monitor/token_js"
    HIDDEN_DRIFT = "monitor/hidden_drift"
    HIDDEN_SEPARATION = "monitor/hidden_separation"
    FUSED_DISAGREEMENT = "monitor/fused_disagreement"
    KL = "eval/kl"
    """The policy's KL from the reference on the evaluation prompts: a fixed KL budget as one signal among the
    others (logged by every evaluation, not by the monitor)."""


class Rule(str, enum.Enum):
    """How a signal's value meets its threshold t (b: the signal's baseline evaluation)."""

    ABOVE = "above"
    """value >= t."""
    ABS_ABOVE = "abs_above"
    """|value| >= t."""
    RISE = "rise"
    """value - value_b >= t."""
    FALLS_TO = "falls_to"
    """value <= t * value_b, with value_b > 0."""


SIGNAL_RULES: dict[Signal, Rule] = {
    Signal.CHECK_DISAGREEMENT: Rule.RISE,
    Signal.PROXY_GAIN_PER_KL: Rule.FALLS_TO,
    Signal.LENGTH_REL_CHANGE: Rule.ABS_ABOVE,
    Signal.TOKEN_JS: Rule.ABOVE,
    Signal.HIDDEN_DRIFT: Rule.ABOVE,
    Signal.HIDDEN_SEPARATION: Rule.RISE,
    Signal.FUSED_DISAGREEMENT: Rule.RISE,
    Signal.KL: Rule.ABOVE,
}


SIGNAL_FIELDS: Mapping[Signal, str] = {s: THRESHOLD_OF[s.value] for s in Signal}
"""Each signal's threshold field of :class:`~r2m.config.monitor.MonitorConfig`."""


class Reason(NamedTuple):
    """One tripped signal at one evaluation."""

    signal: Signal
    value: float
    baseline: Optional[float]
    """value_b for RISE / FALLS_TO, else None."""
    threshold: float
    rule: Rule


def _value(row: Mapping[str, object], signal: Signal, index: int) -> float:
    v = row.get(signal.value)
    if v is None:
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f"alarm history[{index}]: {signal.value} is {v!r}; expected a number, None or absent")
    return float(v)


def _trips(rule: Rule, value: float, base: float, t: float) -> bool:
    if rule is Rule.ABOVE:
        return value >= t
    if rule is Rule.ABS_ABOVE:
        return abs(value) >= t
    if rule is Rule.RISE:
        return value - base >= t
    return base > 0 and value <= t * base  # FALLS_TO


def tripped_signals(history: Sequence[Mapping[str, object]], config: MonitorConfig) -> list[tuple[Reason, ...]]:
    """Per evaluation, the signals that trip (module docstring); keys other than :class:`Signal` are ignored."""
    out: list[list[Reason]] = [[] for _ in history]
    for sig in Signal:
        t = config.threshold(sig)
        if t is None:
            continue
        rule, base = SIGNAL_RULES[sig], None
        for i, row in enumerate(history):
            v = _value(row, sig, i)
            if not math.isfinite(v):
                continue
            base = v if base is None else base  # the first finite value is the baseline
            if _trips(rule, v, base, t):
                out[i].append(Reason(sig, v, base if rule in (Rule.RISE, Rule.FALLS_TO) else None, t, rule))
    return [tuple(r) for r in out]


class Alarm(NamedTuple):
    index: Optional[int]
    """The evaluation where the alarm fires (None: it never does)."""
    onset: Optional[int]
    """index - patience + 1: the first evaluation of the tripped run; keep the checkpoint of onset - 1."""
    reasons: tuple[Reason, ...]
    """The signals tripped at ``index``."""


def first_alarm(history: Sequence[Mapping[str, object]], config: MonitorConfig = MonitorConfig()) -> Alarm:
    """The first evaluation where ``min_signals`` signals have tripped for ``patience`` evaluations running."""
    trips = tripped_signals(history, config)
    run = 0
    for i, reasons in enumerate(trips):
        run = run + 1 if i >= config.warmup and len(reasons) >= config.min_signals else 0
        if run >= config.patience:
            return Alarm(i, i - config.patience + 1, reasons)
    return Alarm(None, None, ())
