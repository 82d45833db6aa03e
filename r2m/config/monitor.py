"""``rl.monitor``: the over-optimisation monitor's settings and the alarm's thresholds (docs/MONITOR.md).

One type for both: :func:`r2m.core.monitor.first_alarm` reads a :class:`MonitorConfig` (its threshold and rule
fields; the core layer imports the config layer), so ``rl.monitor.token_js=0.05`` on the command line is the
alarm's ``token_js``, and the bench's rules are MonitorConfigs too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from r2m.errors import ConfigError

THRESHOLD_OF = {
    "monitor/check_disagreement": "check_disagreement_rise",
    "monitor/proxy_gain_per_kl": "proxy_gain_per_kl_ratio",
    "monitor/length_rel_change": "length_rel_change",
    "monitor/token_js": "token_js",
    "monitor/hidden_drift": "hidden_drift",
    "monitor/hidden_separation": "hidden_separation_rise",
    "monitor/fused_disagreement": "fused_disagreement_rise",
    "eval/kl": "kl",
}
"""Each signal's metrics key (the value of :class:`r2m.core.monitor.Signal`) -> its threshold field."""
THRESHOLDS = tuple(THRESHOLD_OF.values())
"""The threshold fields, one per signal."""
ALARM_RULE = ("min_signals", "patience", "warmup")
"""The fields of the rule that combines the tripped signals."""


@dataclass(frozen=True)
class MonitorConfig:
    """Label-free over-optimisation signals at every evaluation (logged under monitor/*) and the alarm rule.

    A signal trips by its rule (docs/MONITOR.md); the alarm fires once ``min_signals`` signals have tripped at
    ``patience`` evaluations running. A threshold of null turns its signal off. The defaults are the rule the
    alarm's validation tuned on every run of the paper bench (gold-reward world, 0.3M-parameter models;
    docs/MONITOR.md gives how it scores held out and where it fails); other model sizes may need their own."""

    enabled: bool = True
    """Compute the signals at every evaluation (false: no monitor/* metrics, no alarm)."""
    check_rm: Optional[str] = None
    """A second, independent reward model (a path, as reward.path) for monitor/check_disagreement. null: in the
    gold-reward world, one trained (and cached) on the world's pref_policy pairs, disjoint from the proxy RM's
    pref_train; elsewhere the signal is off (logged once)."""
    world_check_rm: bool = True
    """With check_rm null in the gold-reward world, build the world's check RM (false: the signal is off)."""
    check_disagreement_rise: Optional[float] = 0.2
    """Trip when the proxy-vs-check rank disagreement rises this much above its baseline (share of pairs)."""
    proxy_gain_per_kl_ratio: Optional[float] = 0.25
    """Trip when proxy gain per unit KL falls to this fraction of its baseline (first) value; in (0, 1)."""
    length_rel_change: Optional[float] = 0.1
    """Trip when the mean response length differs from the SFT policy's by this fraction (either way)."""
    token_js: Optional[float] = 0.002
    """Trip when the unigram JS divergence from the SFT policy's responses reaches this (nats, <= ln 2)."""
    hidden_drift: Optional[float] = 0.03
    """Trip when the mean cosine distance of hidden states from the SFT policy's reaches this (in [0, 2])."""
    hidden_separation_rise: Optional[float] = 0.002
    """Trip when the 2-cluster separation (within - cross similarity) rises this much above its baseline."""
    fused_disagreement_rise: Optional[float] = None
    """Trip when R2M's fused-vs-vanilla rank disagreement rises this much above its baseline (off by default:
    the tuning never used it, and alone it recovered >= 90% in 6% of the held-out runs)."""
    kl: Optional[float] = None
    """Trip when the policy's KL from the reference on the evaluation prompts (eval/kl, nats) reaches this: a
    fixed KL budget as one of the signals (off by default)."""
    min_signals: int = 2
    """How many signals must trip at one evaluation."""
    patience: int = 1
    """How many consecutive evaluations must each have ``min_signals`` tripped."""
    warmup: int = 1
    """Evaluations 0 .. warmup-1 never count (evaluation 0 is the SFT policy, the baseline)."""

    def threshold(self, signal: str) -> Optional[float]:
        """The threshold of ``signal`` (a :class:`r2m.core.monitor.Signal`, or its metrics key); None: off."""
        return getattr(self, THRESHOLD_OF[signal])

    def __post_init__(self) -> None:
        for name in THRESHOLDS:
            t = getattr(self, name)
            if t is not None and not (math.isfinite(t) and t > 0):
                raise ConfigError(f"monitor.{name}: expected a finite number > 0 or null, got {t!r}")
        if self.proxy_gain_per_kl_ratio is not None and self.proxy_gain_per_kl_ratio >= 1:
            raise ConfigError(f"monitor.proxy_gain_per_kl_ratio: expected a fraction < 1, got "
                              f"{self.proxy_gain_per_kl_ratio!r}")
        for name in ("min_signals", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"monitor.{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.warmup < 0:
            raise ConfigError(f"monitor.warmup: expected an integer >= 0, got {self.warmup!r}")
