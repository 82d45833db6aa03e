"""Python datasets as data sources: a ``datasets.Dataset`` or ``IterableDataset`` the object API was given is read
where it is, under a source name that a config path field can hold: ``python:<argument>:<fingerprint>`` for a
``Dataset`` (its content's), ``python:<argument>`` for an ``IterableDataset``, so that the same data given to a new
trainer resumes the run (the name is part of the checkpoint's config).

Errors about such a source name the user's argument (``train_dataset``), not a temporary copy; an
``IterableDataset`` is streamed (RL prompts are taken as they are needed). The registry holds weak references:
the trainer that was given the dataset keeps it alive, and a source whose dataset is gone says so.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any, NamedTuple, Optional

from r2m.errors import DataError

PREFIX = "python:"


class PythonSource(NamedTuple):
    dataset: Any
    """The ``datasets.Dataset`` or ``datasets.IterableDataset``."""
    name: str
    """The argument it was passed as (``train_dataset``), for error messages."""


_REGISTRY: dict[str, tuple[weakref.ref, str]] = {}
_COUNTER = itertools.count(1)


def register_dataset(dataset: Any, name: str) -> str:
    """The source name under which ``dataset`` (passed as argument ``name``) is read; the caller keeps it alive."""
    from datasets import Dataset, IterableDataset

    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise DataError(f"{name}: expected a path, a datasets.Dataset or a datasets.IterableDataset, got "
                        f"{type(dataset).__name__}" + (" (pick a split: dataset['train'])"
                                                       if type(dataset).__name__.endswith("Dict") else ""))
    fingerprint = getattr(dataset, "_fingerprint", None)
    key = f"{PREFIX}{name}" + (f":{fingerprint}" if fingerprint else "")
    held = _REGISTRY.get(key)
    if held is not None and held[0]() is not None and held[0]() is not dataset:
        key = f"{key}:{next(_COUNTER)}"  # another live dataset under this argument name (two trainers at once)
    _REGISTRY[key] = (weakref.ref(dataset), name)
    return key


def python_source(source: Any) -> Optional[PythonSource]:
    """The dataset behind ``source`` when it names one (None: a path or hub name)."""
    if not str(source).startswith(PREFIX):
        return None
    entry = _REGISTRY.get(str(source))
    dataset = entry[0]() if entry is not None else None
    if dataset is None:
        raise DataError(f"{source}: a Python dataset given to a trainer of this process (or of an earlier one), which "
                        "is gone; pass the dataset to the trainer again, or a path")
    return PythonSource(dataset, entry[1])


def display_name(source: Any) -> str:
    """How errors name ``source``: the argument name of a Python dataset, else the path or hub name."""
    entry = _REGISTRY.get(str(source))
    return entry[1] if entry is not None else str(source)


def is_iterable(source: Any) -> bool:
    """Whether ``source`` is a registered ``IterableDataset`` (read as a stream)."""
    found = python_source(source)
    if found is None:
        return False
    from datasets import IterableDataset

    return isinstance(found.dataset, IterableDataset)
