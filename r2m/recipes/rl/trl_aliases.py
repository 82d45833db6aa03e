"""TRL-named copies of r2m's step metrics, logged beside them so that a TRL dashboard reads r2m runs.

Each alias is a copy of an r2m key, never a second computation; docs/TRL.md says where the meanings differ.
"""

from __future__ import annotations

TRL_ALIASES: dict[str, str] = {
    "reward": "reward/proxy",  # the reward the policy is trained on, before shaping (TRL: the summed reward funcs)
    "reward_std": "reward/group_std",  # std within groups of K, averaged over groups
    "frac_reward_zero_std": "groups/degenerate",  # groups whose K rewards are all equal
    "completions/mean_length": "response/length",
    "clip_ratio/region_mean": "policy/clip_frac",  # tokens whose ratio was clipped (either side)
    "learning_rate": "policy/lr",
}
"""TRL name -> the r2m metric it copies."""


def with_trl_aliases(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus each TRL alias whose r2m key is present."""
    return {**metrics, **{alias: metrics[key] for alias, key in TRL_ALIASES.items() if key in metrics}}
