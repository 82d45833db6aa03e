"""Named errors for files that cannot be decoded: safetensors weights, tokenizer and config files.

The libraries underneath raise a ``SafetensorError: incomplete metadata``, a bare ``UnicodeDecodeError``
without a file name, or an ``OSError`` about JSON. Here each becomes one line naming the file (and for
text, the line and column of the first undecodable byte), raised as an :class:`r2m.errors.R2MError` so
that the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional

from r2m.errors import CheckpointError, DataError, ModelError
from r2m.fileio import decode_lines

# The text files a Hugging Face model or tokenizer directory holds.
_TEXT_SUFFIXES = (".json", ".txt", ".jinja")


def load_safetensors(path: str | Path) -> dict:
    """``safetensors.torch.load_file``, with a damaged or truncated file named."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the file is damaged or "
                              "truncated") from None


def read_json(path: str | Path):
    """A JSON file's value; an undecodable byte or malformed JSON is an error naming file, line and column."""

    path = Path(path)
    try:
        return json.loads("\n".join(decode_lines(path, path.read_bytes())))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


def first_undecodable(directory: str | Path) -> Optional[str]:
    """``file:line: not valid UTF-8 (...)`` or ``file: invalid JSON (...)`` for the first text file of
    ``directory`` that does not decode, else None."""

    directory = Path(directory)
    if not directory.is_dir():
        return None
    for p in sorted(directory.iterdir()):
        if not p.is_file() or p.suffix not in _TEXT_SUFFIXES:
            continue
        try:
            text = "\n".join(decode_lines(p, p.read_bytes()))
        except DataError as e:
            return str(e)
        if p.suffix == ".json":
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                return f"{p}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})"
    return None


@contextlib.contextmanager
def named_load_errors(path: str | Path, what: str) -> Iterator[None]:
    """Within the block, undecodable model, tokenizer or config files become a :class:`ModelError` that
    names the file (``what`` says what was being loaded: "tokenizer", "model")."""
    from safetensors import SafetensorError

    try:
        yield
    except (UnicodeDecodeError, json.JSONDecodeError, SafetensorError, OSError) as e:
        found = first_undecodable(path)
        if found is not None:
            raise ModelError(f"{what} at {path}: {found}") from None
        if isinstance(e, SafetensorError):
            raise ModelError(f"{what} at {path}: {_damaged_weights(Path(path)) or e}") from None
        raise


def _damaged_weights(directory: Path) -> Optional[str]:
    """``file: not a readable safetensors file (...)`` for the first such file of ``directory``."""
    from safetensors import SafetensorError, safe_open

    for p in sorted(directory.glob("*.safetensors")) if directory.is_dir() else []:
        try:
            with safe_open(str(p), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except SafetensorError as e:
            return f"{p}: not a readable safetensors file ({e}); the file is damaged or truncated"
    return None
