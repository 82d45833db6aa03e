"""Tiny models of real families for the TRL tests: a Qwen2.5 policy (ChatML, no BOS) and a Llama 3 reward model
(its own tokenizer and header template, BOS added), built from configs by :mod:`r2m.models.families`; and TRL
``prompt`` columns, plain or conversational."""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

import pytest

WORDS = "the quick brown fox jumps over lazy dog what is capital of france paris sky blue".split()


class FamilyModels(NamedTuple):
    policy: Path
    rm: Path


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> FamilyModels:
    from r2m.models.families import Family, save_family_model

    root = tmp_path_factory.mktemp("families")
    return FamilyModels(save_family_model(Family.QWEN2_5, root / "qwen-policy", seed=0),
                        save_family_model(Family.LLAMA3, root / "llama-rm", rm=True, seed=1))


def _texts(n: int, prefix: str = "", seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{prefix}{i} " + " ".join(rng.choice(WORDS) for _ in range(4)) for i in range(n)]


def _chats(n: int, prefix: str = "", seed: int = 0) -> list[list[dict]]:
    out = []
    for i, text in enumerate(_texts(n, prefix, seed)):
        system = [{"role": "system", "content": "Answer briefly."}] if i % 2 else []
        out.append([*system, {"role": "user", "content": text}])
    return out


class Prompts:
    """``n`` distinct prompts starting with ``prefix``: text, or chat messages (every other one with a system turn)."""

    texts = staticmethod(_texts)
    chats = staticmethod(_chats)


@pytest.fixture(scope="session")
def prompts() -> Prompts:
    return Prompts()
