"""SER's data: the splits (SER App. D.1), the unlabelled pool, pseudo-labelled pairs and their quality."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch

from r2m.config.jobs import SERConfig
from r2m.config.enums import SERVariant
from r2m.eval.rm_accuracy import pairwise_wins
from r2m.ser.rules import Selection
from r2m.data.jsonl import write_jsonl
from r2m.errors import ConfigError
from r2m.fileio import atomic_write_text

log = logging.getLogger("r2m")

# ---------------------------------------------------------------------------------------------
# Splits (SER Appendix D.1)
# ---------------------------------------------------------------------------------------------


class SplitSizes(NamedTuple):
    sft: int
    rm: int
    ppo: int
    labelled: int
    """Pairs of the RM part that keep their labels: seed training pairs + validation."""
    val: int


@dataclass(frozen=True)
class UnlabeledPool:
    """The RM part's pairs without their labels, in a random answer order.

    The learner reads only ``prompts``, ``first`` and ``second``; the hidden label and the gold
    rewards are kept to measure how good the pseudo-labels are.
    """

    prompts: list[str]
    first: list[str]
    second: list[str]
    label_first: torch.Tensor
    """(N,) bool: the hidden label prefers the first answer."""
    gold_first: Optional[torch.Tensor]
    """(N,) gold reward of the first answer (world rows), else None."""
    gold_second: Optional[torch.Tensor]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True)
class SERSplits:
    sft: list[dict]
    """SFT part (its chosen answers are SFT demonstrations; in the world the world's SFT policy is used)."""
    seed: list[dict]
    """Labelled pairs Loop 0 trains on."""
    val: list[dict]
    """D_val, labelled: learning status and validation accuracy."""
    unlabeled: UnlabeledPool
    """The rest of the RM part, labels hidden."""
    rm: list[dict]
    """The whole RM part with its labels: the Full baseline's training set."""
    ppo: list[dict]
    """PPO part: its prompts are PPO's training prompts (``ser.ppo_prompts=split``)."""


def split_sizes(n: int, ser: SERConfig) -> SplitSizes:
    """Sizes of every part for ``n`` preference pairs; a part that would be empty is a ConfigError."""
    n_sft, n_ppo = round(ser.sft_frac * n), round(ser.ppo_frac * n)
    n_rm = n - n_sft - n_ppo
    labelled = round(ser.seed_frac * n_rm)
    val = ser.val_size or max(1, round(ser.val_frac * labelled))
    if labelled - val < 1:
        field = "ser.val_size" if ser.val_size else "ser.seed_frac"
        raise ConfigError(f"{field}: the labelled seed ({labelled} of {n_rm} RM pairs) leaves no training pair after "
                          f"{val} validation pairs; expected a larger ser.seed_frac or fewer validation pairs")
    if n_rm - labelled < 1:
        raise ConfigError(f"ser.seed_frac: expected some unlabelled RM pairs, got {labelled} labelled of {n_rm}")
    return SplitSizes(n_sft, n_rm, n_ppo, labelled, val)


def make_splits(rows: Sequence[dict], ser: SERConfig, seed: int) -> SERSplits:
    """Random SFT/RM/PPO parts, the labelled seed with its validation set, and the unlabelled pool."""
    sizes = split_sizes(len(rows), ser)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows), generator=gen).tolist()
    shuffled = [rows[i] for i in order]
    sft, rm = shuffled[: sizes.sft], shuffled[sizes.sft: sizes.sft + sizes.rm]
    ppo = shuffled[sizes.sft + sizes.rm:]
    val, seed_rows = split_by_prompt(rm[: sizes.labelled], sizes.val)
    if (warning := status1_unreachable(len(val), ser)) is not None:
        log.warning(warning)
    hidden = rm[sizes.labelled:]
    label_first = torch.rand(len(hidden), generator=gen) < 0.5  # (N,) random order: position leaks nothing
    return SERSplits(sft=sft, seed=seed_rows, val=val, unlabeled=_hide_labels(hidden, label_first), rm=rm, ppo=ppo)


def status1_unreachable(n_val: int, ser: SERConfig) -> Optional[str]:
    """Why Status 1 can never fire with ``n_val`` validation pairs (fewer than ``ser.min_status1``, the confident
    pairs it needs), or None. Such a run can only take Status 2 or stop at once; it is allowed (a tiny world), but
    said: docs/WORLDS.md sizes D_val for the status rule (``ser.val_size``)."""
    if ser.variant != SERVariant.PAPER or n_val >= ser.min_status1:
        return None
    return (f"ser: D_val holds {n_val} pairs, fewer than ser.min_status1 = {ser.min_status1} confident pairs that "
            f"Status 1 needs: Status 1 cannot fire (raise ser.val_size or ser.seed_frac, or lower ser.min_status1)")


class ValSplit(NamedTuple):
    val: list[dict]
    seed: list[dict]


def split_by_prompt(labelled: Sequence[dict], n_val: int) -> ValSplit:
    """D_val and the seed's training pairs from the labelled seed, with no prompt in both.

    Whole prompt groups (in order of first appearance) go to D_val until it holds at least ``n_val`` pairs,
    so a prompt that recurs with other answers (the world's short prompts do) never validates a seed RM
    that trained on it; D_val can exceed ``n_val`` by the size of its last group less one.
    """
    groups: dict[str, list[dict]] = {}
    for row in labelled:
        groups.setdefault(row["prompt"], []).append(row)
    val: list[dict] = []
    seed: list[dict] = []
    for group in groups.values():
        (val if len(val) < n_val else seed).extend(group)
    if not seed:
        raise ConfigError(f"ser.seed_frac: the labelled seed ({len(labelled)} pairs) has too few distinct prompts to "
                          f"leave a training pair outside the {len(val)} validation pairs; expected a larger seed")
    return ValSplit(val, seed)


def _hide_labels(rows: Sequence[dict], label_first: torch.Tensor) -> UnlabeledPool:
    first = [r["chosen"] if f else r["rejected"] for r, f in zip(rows, label_first.tolist())]
    second = [r["rejected"] if f else r["chosen"] for r, f in zip(rows, label_first.tolist())]
    gold_first = gold_second = None
    if rows and "gold_chosen" in rows[0]:
        g_c = torch.tensor([r["gold_chosen"] for r in rows], dtype=torch.float32)  # (N,)
        g_r = torch.tensor([r["gold_rejected"] for r in rows], dtype=torch.float32)  # (N,)
        gold_first, gold_second = torch.where(label_first, g_c, g_r), torch.where(label_first, g_r, g_c)
    return UnlabeledPool([r["prompt"] for r in rows], first, second, label_first, gold_first, gold_second)


def write_splits(splits: SERSplits, out: Path) -> dict[str, int]:
    """The parts as JSONL under ``out`` (for inspection and reuse), and their sizes."""

    pool = splits.unlabeled
    write_jsonl(out / "sft.jsonl", [{"prompt": r["prompt"], "response": r["chosen"]} for r in splits.sft])
    write_jsonl(out / "seed.jsonl", splits.seed)
    write_jsonl(out / "val.jsonl", splits.val)
    write_jsonl(out / "rm_full.jsonl", splits.rm)
    write_jsonl(out / "unlabeled.jsonl", [
        {"prompt": p, "first": a, "second": b, "first_is_chosen": bool(f)}
        for p, a, b, f in zip(pool.prompts, pool.first, pool.second, pool.label_first.tolist())])
    write_jsonl(out / "ppo_prompts.jsonl", [{"prompt": r["prompt"]} for r in splits.ppo])
    sizes = {"sft": len(splits.sft), "rm": len(splits.rm), "ppo": len(splits.ppo), "seed": len(splits.seed),
             "val": len(splits.val), "unlabeled": len(pool)}
    atomic_write_text(out / "sizes.json", json.dumps(sizes, indent=2) + "\n")
    return sizes


# ---------------------------------------------------------------------------------------------
# Pseudo-labels and their quality
# ---------------------------------------------------------------------------------------------


class PairSet(NamedTuple):
    """Preference pairs as three parallel lists."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]


def labelled_pairs(rows: Sequence[dict]) -> PairSet:
    return PairSet([r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows])


def pseudo_pairs(pool: UnlabeledPool, sel: Selection) -> PairSet:
    """The kept pairs, chosen = the answer the RM scored higher."""
    idx, first = sel.index.tolist(), sel.first_is_chosen.tolist()
    chosen = [pool.first[i] if f else pool.second[i] for i, f in zip(idx, first)]
    rejected = [pool.second[i] if f else pool.first[i] for i, f in zip(idx, first)]
    return PairSet([pool.prompts[i] for i in idx], chosen, rejected)


class PseudoQuality(NamedTuple):
    label_acc: float
    """Share of kept pairs whose pseudo-label agrees with the hidden label (NaN when none are kept)."""
    gold_acc: float
    """Share of kept pairs with distinct gold rewards whose pseudo-chosen answer has the higher gold (NaN: none)."""


def pseudo_quality(pool: UnlabeledPool, sel: Selection) -> PseudoQuality:
    if not len(sel.index):
        return PseudoQuality(float("nan"), float("nan"))
    label_acc = (sel.first_is_chosen == pool.label_first[sel.index]).float().mean().item()
    gold_acc = float("nan")
    if pool.gold_first is not None:
        g1, g2 = pool.gold_first[sel.index], pool.gold_second[sel.index]  # (K,)
        distinct = g1 != g2
        if distinct.any():
            gold_acc = (sel.first_is_chosen == (g1 > g2))[distinct].float().mean().item()
    return PseudoQuality(label_acc, gold_acc)


def pool_accuracy(pool: UnlabeledPool, s1: torch.Tensor, s2: torch.Tensor) -> float:
    """The RM's agreement with the hidden labels over the whole pool, before any filtering (ties half)."""
    wins = pairwise_wins(s1, s2)  # (N,) 1 where answer 1 scores higher
    return torch.where(pool.label_first, wins, 1.0 - wins).mean().item()


