"""The labeller's ceiling: the best accuracy any reward model can reach on a world's labelled pairs.

The labeller picks a over b with P(a > b) = p = sigmoid((g_a - g_b)/tau + lambda (len_a - len_b))
(:func:`r2m.world.data.label_probability`), independently per pair. Whatever an RM scores, it predicts one of
the two orders, which matches the label with probability p or 1 - p; the best possible rule (predicting the
labeller's more likely choice) has expected accuracy

    ceiling = (1/N) sum_pairs max(p_n, 1 - p_n),

exact, not sampled. The same probabilities give the labels' expected agreement with the gold order,
(1/N') sum_{g_a != g_b} P(label follows gold), which shows how noisy the labels are.

The ceiling assumes a rule that reads what the labeller reads. An RM that reads less (the ``blind`` world's
prompt view) is bounded by :func:`r2m.world.view_accuracy.view_best_accuracy`; :func:`world_ceilings` gives
the three numbers of a world and :func:`write_world_ceilings` the ``docs/bench/worlds.json`` table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from r2m.config.run import WorldConfig
from r2m.fileio import atomic_write_text
from r2m.world.data import label_probability, make_pairs
from r2m.world.view_accuracy import view_best_accuracy


class LabellerCeiling(NamedTuple):
    """Exact expectations over a set of labelled pairs."""

    label_accuracy: float
    """mean_n max(p_n, 1 - p_n): the best expected accuracy of any RM against the labels (the ceiling)."""
    gold_agreement: float
    """mean over pairs of unequal gold of P(the label prefers the higher-gold answer); NaN if there are none."""
    n: int
    """Pairs."""


def pair_probability(row: dict[str, Any], cfg: WorldConfig) -> float:
    """P(chosen > rejected) recomputed from the row's gold rewards and lengths under ``cfg``'s labeller."""
    lc, lr = len(row["chosen"].split()), len(row["rejected"].split())
    return label_probability(row["gold_chosen"], row["gold_rejected"], lc, lr, cfg.tau, cfg.length_bias)


def labeller_ceiling(rows: Sequence[dict[str, Any]], cfg: WorldConfig) -> LabellerCeiling:
    """:class:`LabellerCeiling` of world pair rows (``chosen``, ``rejected``, ``gold_chosen``, ``gold_rejected``)."""
    if not rows:
        raise ValueError("labeller_ceiling: expected at least one pair, got none")
    best, agree, unequal = 0.0, 0.0, 0
    for row in rows:
        p = pair_probability(row, cfg)  # P(chosen > rejected)
        best += max(p, 1.0 - p)
        if row["gold_chosen"] != row["gold_rejected"]:
            unequal += 1
            agree += p if row["gold_chosen"] > row["gold_rejected"] else 1.0 - p
    return LabellerCeiling(best / len(rows), agree / unequal if unequal else float("nan"), len(rows))


# ---------------------------------------------------------------------------------------------- per world


class WorldCeilings(NamedTuple):
    """What the labels of a world's held-out pairs allow, exactly (docs/WORLDS.md, ``docs/bench/worlds.json``)."""

    labeller_ceiling: float
    """mean max(p, 1 - p): the best expected accuracy of any rule that knows each pair's label probability."""
    view_best_accuracy: float
    """The best expected accuracy of a rule reading the pair as the world's RM does (its prompt view)."""
    full_view_best_accuracy: float
    """The same for a rule reading the whole prompt and both answers: what the labeller reads, so the ceiling."""
    n: int
    """Pairs (the world's ``pref_eval``)."""


def world_ceilings(world: WorldConfig) -> WorldCeilings:
    """:class:`WorldCeilings` of ``world`` on its held-out pairs (``pref_eval``, drawn from ``world.seed``)."""
    rows = make_pairs(world, "pref_eval")
    full = dataclasses.replace(world, rm_prompt_digits=0)
    return WorldCeilings(labeller_ceiling(rows, world).label_accuracy, view_best_accuracy(rows, world),
                         view_best_accuracy(rows, full), len(rows))


def write_world_ceilings(worlds: Mapping[str, WorldConfig], out: str | Path) -> dict[str, Any]:
    """``{"worlds": {name: {labeller_ceiling, view_best_accuracy, full_view_best_accuracy}}}`` for each preset,
    rounded to 4 decimals, written atomically to ``out`` (``r2m world --ceilings``); returns the object."""
    table = {}
    for name, world in worlds.items():
        c = world_ceilings(world)
        table[name] = {"labeller_ceiling": round(c.labeller_ceiling, 4), "view_best_accuracy":
                       round(c.view_best_accuracy, 4), "full_view_best_accuracy": round(c.full_view_best_accuracy, 4)}
    obj = {"pairs": "each world's pref_eval pairs (world.seed); exact expectations over the labeller's draws "
                    "(r2m.world.ceiling.world_ceilings, docs/WORLDS.md)", "worlds": table}
    atomic_write_text(out, json.dumps(obj, indent=2) + "\n")
    return obj
