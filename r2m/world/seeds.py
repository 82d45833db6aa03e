"""Which seed each product of the world draws from (issue 14, item 3: seeds that vary the reward model).

``world.seed`` sets everything by default. ``world.rm_seed`` (when set) takes over what makes the proxy RM: its
training pairs (``pref_train``, and ``pref_policy`` for the Pretrained-RM baseline), its head init and its batch
order. The SFT demonstrations, the prompts and the held-out pairs (``pref_eval``) stay on ``world.seed``, so the
SFT policy (and the RM backbone) is shared by every bench seed and RM accuracies are measured on one set.
Pure python.
"""

from __future__ import annotations

import dataclasses

from r2m.config.run import WorldConfig

RM_STREAMS = frozenset({"pref_train", "pref_policy"})
"""The data streams drawn from :func:`rm_seed` instead of ``world.seed``."""


def rm_seed(world: WorldConfig) -> int:
    """``world.rm_seed`` when set, else ``world.seed`` (the default run's RM is unchanged)."""
    return world.seed if world.rm_seed is None else world.rm_seed


def stream_seed(world: WorldConfig, stream: str) -> int:
    """The seed of one data stream: :func:`rm_seed` for :data:`RM_STREAMS`, ``world.seed`` otherwise."""
    return rm_seed(world) if stream in RM_STREAMS else world.seed


LABELLER_FIELDS = ("tau", "length_bias", "n_pref_train", "n_pref_eval", "n_pref_policy", "rm_seed",
                   "rm_prompt_digits")
"""World fields that change only the labelled pairs or the RM's view, never the SFT demonstrations."""


def sft_world(world: WorldConfig) -> WorldConfig:
    """The world as the SFT stages see it (their cache keys): the :data:`LABELLER_FIELDS` at their defaults,
    since the SFT policy and the RM backbone read only the demonstrations. So every RM seed and every world
    preset (they differ in labeller fields only) shares one SFT policy and one RM backbone. For the default
    world this is ``world`` itself."""
    default = WorldConfig()
    return dataclasses.replace(world, **{f: getattr(default, f) for f in LABELLER_FIELDS})
