"""Each equation of the papers' method sections is named in the docstring of the code implementing it, so that
searching "Eq. 6" finds the code (R2M Eq. 1-7, SER Eq. 2-5)."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

# (paper, equation) -> the objects implementing it. r2m.models keeps its equations in its module docstrings.
IMPLEMENTED_BY = {
    ("R2M", 1): ["r2m.core.advantages:compute_rloo_advantage"],
    ("R2M", 2): ["r2m.core.losses:clipped_policy_loss", "r2m.updates.policy:PolicyUpdater.update"],
    ("R2M", 3): ["r2m.models.fusion"],
    ("R2M", 4): ["r2m.models.fusion", "r2m.models.r2m:ScoreParts"],
    ("R2M", 5): ["r2m.core.losses:bradley_terry_loss", "r2m.updates.grebt:GREBTUpdater.update"],
    ("R2M", 6): ["r2m.core.losses:group_reward_entropy", "r2m.updates.grebt:GREBTUpdater.update"],
    ("R2M", 7): ["r2m.core.losses:grebt_terms", "r2m.core.losses:grebt_loss", "r2m.updates.grebt:GREBTUpdater.update"],
    ("SER", 2): ["r2m.ser.rules:status_evidence"],
    ("SER", 3): ["r2m.ser.rules:learning_status"],
    ("SER", 4): ["r2m.ser.rules:filter_pairs"],
    ("SER", 5): ["r2m.core.losses:margin_pairwise_loss", "r2m.ser.rules:pair_loss"],
}


def _resolve(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def equations_named(doc: str) -> set[int]:
    """Equation numbers a docstring names: "Eq. 2", "Eq. 5-7" (a range), "(Eq. 3)"."""
    out: set[int] = set()
    for a, b in re.findall(r"Eq\. ?(\d+)(?:\s*[-–]\s*(\d+))?", doc):
        out.update(range(int(a), int(b or a) + 1))
    return out


def test_ranges_are_read() -> None:
    assert equations_named("GREBT (Eq. 5-7) and Eq. 2") == {2, 5, 6, 7}


@pytest.mark.parametrize("paper, eq", sorted(IMPLEMENTED_BY))
def test_the_code_names_its_equation(paper, eq) -> None:
    for target in IMPLEMENTED_BY[(paper, eq)]:
        doc = inspect.getdoc(_resolve(target)) or ""
        assert eq in equations_named(doc), f"{target}: its docstring does not name {paper} Eq. {eq}"
