"""TRL's dataset formats (data.format=trl): standard and conversational, every type, fixtures in tests/fixtures/trl_*;
per-path formats, data.config (a subset) and data.streaming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2m.data.chat import prompt_messages
from r2m.data.datasets import Source, load_rows
from r2m.data.adapters import RowKind
from r2m.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SKY = [{"role": "user", "content": "What color is the sky?"}]


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory):
    from r2m.models.families import Family, train_tokenizer

    tok = train_tokenizer(Family.PYTHIA)
    tok.chat_template = TEMPLATE
    return tok


def _rows(name: str, kind: RowKind, tok=None) -> list[dict]:
    return load_rows(FIXTURES / f"trl_{name}.jsonl", "trl", kind, tokenizer=tok).rows


STANDARD = {
    "prompt_only": {RowKind.PROMPT: [{"prompt": "The sky is"}, {"prompt": "The sun is"}]},
    "prompt_completion": {RowKind.SFT: [{"prompt": "The sky is", "response": " blue."},
                                        {"prompt": "The sun is", "response": " in the sky."}]},
    "preference": {RowKind.PREFERENCE: [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
                                        {"prompt": "The sun is", "chosen": " in the sky.", "rejected": " in the sea."}],
                   RowKind.SFT: [{"prompt": "The sky is", "response": " blue."},
                                 {"prompt": "The sun is", "response": " in the sky."}]},
    # TRL's extract_prompt: the common prefix, not ending inside the shared space.
    "preference_implicit": {RowKind.PREFERENCE: [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"prompt": "The sun is in the", "chosen": " sky.", "rejected": " sea."}]},
}


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_standard_types(name) -> None:
    for kind, expected in STANDARD[name].items():
        assert _rows(name, kind) == expected, (name, kind)
    assert _rows(name, RowKind.PROMPT)[0]["prompt"].startswith("The s")


@pytest.mark.parametrize("name", ["chat_prompt_only", "chat_prompt_completion", "chat_preference",
                                  "chat_preference_implicit"])
def test_conversational_types_render_with_the_template_and_keep_messages(name, chat_tok) -> None:
    (first, _) = _rows(name, RowKind.PROMPT, chat_tok)
    assert first["prompt"] == "<|user|>What color is the sky?\n<|assistant|>"
    assert prompt_messages(first["prompt"]) == SKY  # the RM renders them with its own template
    if "completion" in name or "preference" in name:
        (sft, _) = _rows(name, RowKind.SFT, chat_tok)
        assert sft["response"] == "It is blue."
    if "preference" in name:
        (pair, _) = _rows(name, RowKind.PREFERENCE, chat_tok)
        assert (pair["chosen"], pair["rejected"]) == ("It is blue.", "It is green.")


def test_wrong_type_for_the_kind_names_the_row() -> None:
    with pytest.raises(DataError, match=r"trl_prompt_only.jsonl: row 1: a prompt-only row gives prompts, not sft rows"):
        _rows("prompt_only", RowKind.SFT)
    with pytest.raises(DataError, match=r"row 1: a prompt-completion row gives prompts and sft rows, not preference"):
        _rows("prompt_completion", RowKind.PREFERENCE)


def test_a_reply_of_several_messages_is_refused(tmp_path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": SKY, "completion": [{"role": "assistant", "content": "a"},
                                                              {"role": "assistant", "content": "b"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: row 1: field 'completion' must be one assistant message"):
        load_rows(path, "trl", RowKind.SFT)


def _parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_streaming_reads_the_same_rows(tmp_path) -> None:
    rows = [json.loads(line) for line in (FIXTURES / "trl_preference.jsonl").read_text().splitlines()]
    path = _parquet(rows, tmp_path / "p.parquet")
    eager = load_rows(path, "trl", RowKind.PREFERENCE).rows
    assert load_rows(path, "trl", RowKind.PREFERENCE, how=Source(streaming=True)).rows == eager
    with pytest.raises(DataError, match="data.config='x' names a subset, but a single file has none"):
        load_rows(path, "trl", RowKind.PREFERENCE, how=Source(config="x"))


def test_config_picks_a_subset_of_a_dataset_directory(tmp_path) -> None:
    """A local copy of a hub dataset with two subsets (its dataset card's ``configs``): data.config picks one."""
    _parquet([{"prompt": "A is", "chosen": " a.", "rejected": " b."}], tmp_path / "ds" / "first" / "train.parquet")
    _parquet([{"prompt": "B is", "chosen": " c.", "rejected": " d."}], tmp_path / "ds" / "second" / "train.parquet")
    (tmp_path / "ds" / "README.md").write_text(
        "---\nconfigs:\n- config_name: first\n  data_files:\n  - split: train\n    path: first/train.parquet\n"
        "- config_name: second\n  data_files:\n  - split: train\n    path: second/train.parquet\n---\n")
    got = load_rows(tmp_path / "ds", "trl", RowKind.PREFERENCE, split="train", how=Source(config="second")).rows
    assert got == [{"prompt": "B is", "chosen": " c.", "rejected": " d."}]


def test_per_path_formats_through_the_config(tmp_path) -> None:
    """Prompts from a TRL prompt-only dataset, pairs from UltraFeedback: each path in its own format."""
    from r2m.config.parsing import load_config
    from r2m.recipes.pipeline import read_rows

    prompts, pairs = FIXTURES / "trl_prompt_only.jsonl", FIXTURES / "ultrafeedback.jsonl"
    cfg = load_config(None, ["data.format=ultrafeedback", "data.formats.prompts=trl", f"data.prompts={prompts}",
                             f"data.pref_train={pairs}"])
    assert read_rows(cfg, "prompts", str(prompts)) == ["The sky is", "The sun is"]
    assert all({"prompt", "chosen", "rejected"} <= set(r) for r in read_rows(cfg, "pref_train", str(pairs)))


def test_unknown_per_path_format_names_the_field() -> None:
    from r2m.config.parsing import load_config
    from r2m.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.formats.sft: expected null or one of"):
        load_config(None, ["data.formats.sft=nope"])


def test_a_local_directory_is_never_read_from_a_stale_cache(tmp_path) -> None:
    """Two copies of a dataset directory with the same name and different rows: each reads its own rows (datasets
    would serve the first one's cache to the second)."""
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n"
    for n, where in ((1, "a"), (3, "b")):
        root = tmp_path / where / "same_name"
        _parquet([{"prompt": f"P{i} is", "chosen": " x.", "rejected": " y."} for i in range(n)],
                 root / "data" / "train-00000-of-00001.parquet")
        (root / "README.md").write_text(card)
        assert len(load_rows(root, "trl", RowKind.PREFERENCE, split="train").rows) == n
