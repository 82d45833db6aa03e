"""Bad JSONL input gets an error naming the file, the line and the field."""

from __future__ import annotations

import pytest

from r2m.data.jsonl import read_preferences, read_prompts, read_sft
from r2m.errors import DataError


@pytest.mark.parametrize(
    "content, reader, message",
    [
        ('{"prompt": "a"}\n{"prompt": \n', read_prompts, ":2: malformed JSON"),
        ('[1, 2]\n', read_prompts, ":1: expected a JSON object, got list"),
        ('{"prompt": "a"}\n{"text": "b"}\n', read_prompts, ":2: missing field 'prompt'"),
        ('{"prompt": 3}\n', read_prompts, ":1: field 'prompt' must be a string, got int"),
        ('{"prompt": "  "}\n', read_prompts, ":1: field 'prompt' is empty"),
        ('{"prompt": "p", "response": ""}\n', read_sft, ":1: field 'response' is empty"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}\n', read_preferences,
         ":1: 'chosen' is identical to 'rejected'"),
        ("\n\n", read_prompts, "no rows"),
    ],
)
def test_bad_rows(tmp_path, content, reader, message) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        reader(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DataError, match="file not found"):
        read_prompts(tmp_path / "nope.jsonl")


def test_extra_fields_are_kept(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "gold_chosen": 1.0}\n')
    assert read_preferences(path)[0]["gold_chosen"] == 1.0
