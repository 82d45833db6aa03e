"""``r2m <command> --help-config``: every config field, dotted, with its type, default and docstring."""

from __future__ import annotations

import dataclasses
import typing
from typing import Iterator

from r2m.config.parsing import field_docs, to_dict
from r2m.config.root import Config


def _rows(cls: type, prefix: str = "") -> Iterator[str]:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from _rows(tp, name + ".")
            continue
        doc = " ".join(docs.get(f.name, "(undocumented)").split())
        yield f"{name} = {to_dict(getattr(default, f.name))!r}\n    {doc}"


def config_help() -> str:
    """One entry per leaf field of :class:`Config`, in the sections' order."""
    return "\n".join(_rows(Config))
