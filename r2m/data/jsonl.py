"""Datasets in plain JSONL schemas, validated line by line.

Schemas (extra fields are kept as metadata and otherwise ignored):
- prompts:     {"prompt": str}
- sft:         {"prompt": str, "response": str}
- preferences: {"prompt": str, "chosen": str, "rejected": str}

Errors name the file, the line and the field, and say what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from r2m.errors import DataError
from r2m.fileio import atomic_write_text, decode_lines

PROMPT_FIELDS = ("prompt",)
SFT_FIELDS = ("prompt", "response")
PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


def read_jsonl(path: str | Path, required: Sequence[str], hint: str = "") -> list[dict]:
    """Read a JSONL file whose rows must hold non-empty string ``required`` fields; ``hint`` (the format choice)
    ends the errors about a row's fields."""
    path = Path(path)
    hint = f" ({hint})" if hint else ""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[dict] = []
    for lineno, line in enumerate(decode_lines(path, path.read_bytes()), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        for name in required:
            if name not in row:
                raise DataError(f"{path}:{lineno}: missing field '{name}' (required: {list(required)}){hint}")
            value = row[name]
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field '{name}' must be a string, got {type(value).__name__}{hint}")
            if not value.strip():
                raise DataError(f"{path}:{lineno}: field '{name}' is empty")
        if "chosen" in required and row["chosen"] == row["rejected"]:
            raise DataError(f"{path}:{lineno}: 'chosen' is identical to 'rejected'")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_prompts(path: str | Path) -> list[str]:
    return [r["prompt"] for r in read_jsonl(path, PROMPT_FIELDS)]


def read_sft(path: str | Path) -> list[dict]:
    return read_jsonl(path, SFT_FIELDS)


def read_preferences(path: str | Path) -> list[dict]:
    return read_jsonl(path, PREFERENCE_FIELDS)


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
