"""``r2m <command> --help-config``: the config fields the command reads, dotted, with type, default and docstring."""

from __future__ import annotations

import dataclasses
import typing
from typing import Iterator, Optional

from r2m.config.commands import reads_field
from r2m.config.parsing import field_docs, to_dict
from r2m.config.root import Config


def _rows(cls: type, prefix: str = "") -> Iterator[tuple[str, str]]:
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
        yield name, f"{name} = {to_dict(getattr(default, f.name))!r}\n    {doc}"


def config_help(command: Optional[str] = None) -> str:
    """One entry per leaf field of :class:`Config` that ``r2m <command>`` reads (all of them without a command)."""
    return "\n".join(text for name, text in _rows(Config) if command is None or reads_field(command, name))
