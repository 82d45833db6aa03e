"""A source's format from its columns (data.format left at plain), as TRL reads a dataset; Parquet files and
hub-layout directories; errors that name the format choice; Python datasets read where they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r2m.config.paths import DatasetFormat
from r2m.config.parsing import load_config
from r2m.data.datasets import load_rows
from r2m.data.adapters import RowKind
from r2m.data.trl_formats import detect_format, is_conversational
from r2m.errors import DataError
from r2m.recipes.pipeline import read_rows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")

# fixture -> the kinds it gives, and whether r2m's plain schema already fits it
TRL_FIXTURES = {
    "trl_prompt_only": ([RowKind.PROMPT], True),
    "trl_prompt_completion": ([RowKind.PROMPT, RowKind.SFT], False),
    "trl_preference": ([RowKind.PROMPT, RowKind.PREFERENCE], True),
    "trl_preference_implicit": ([RowKind.PROMPT, RowKind.SFT, RowKind.PREFERENCE], False),
    "trl_chat_prompt_only": ([RowKind.PROMPT], False),
    "trl_chat_prompt_completion": ([RowKind.PROMPT, RowKind.SFT], False),
    "trl_chat_preference": ([RowKind.PROMPT, RowKind.SFT, RowKind.PREFERENCE], False),
    "trl_chat_preference_implicit": ([RowKind.PROMPT, RowKind.SFT, RowKind.PREFERENCE], False),
}


@pytest.fixture(scope="module")
def chat_tok():
    from r2m.models.families import Family, train_tokenizer

    tok = train_tokenizer(Family.PYTHIA)
    tok.chat_template = TEMPLATE
    return tok


def _first(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("name", sorted(TRL_FIXTURES))
def test_trl_types_are_read_without_data_format(name, chat_tok) -> None:
    """Every TRL type reads the same left at plain as with data.format=trl; the format used is reported."""
    kinds, plain_fits = TRL_FIXTURES[name]
    for kind in kinds:
        got = load_rows(FIXTURES / f"{name}.jsonl", "plain", kind, tokenizer=chat_tok)
        want = load_rows(FIXTURES / f"{name}.jsonl", "trl", kind, tokenizer=chat_tok).rows
        keys = list(want[0])  # plain keeps a row's other fields, as r2m's JSONL reader does
        assert [{k: r[k] for k in keys} for r in got.rows] == want, kind
        assert got.report.fmt == (DatasetFormat.PLAIN if plain_fits else DatasetFormat.TRL), kind


def test_detection_agrees_with_trls_own_rule() -> None:
    """On TRL's own examples the rule is TRL's ``is_conversational`` (tested against it where trl is installed)."""
    data_utils = pytest.importorskip("trl.data_utils")
    for name in TRL_FIXTURES:
        row = _first(name)
        assert is_conversational(row) == data_utils.is_conversational(row) == ("chat" in name), name
    assert detect_format(_first("ultrafeedback")) == DatasetFormat.ULTRAFEEDBACK
    assert detect_format(_first("hh_rlhf")) == DatasetFormat.HH_RLHF  # split at the assistant turn, not a prefix
    assert detect_format({"prompt": "p", "response": "r"}) == DatasetFormat.PLAIN
    assert detect_format({"messages": [{"role": "user", "content": "a"}]}) == DatasetFormat.TRL


def test_a_messages_column_gives_prompts_and_sft_rows(tmp_path, chat_tok) -> None:
    chat = [{"role": "user", "content": "What color is the sky?"}, {"role": "assistant", "content": "Blue."}]
    path = tmp_path / "lm.jsonl"
    path.write_text(json.dumps({"messages": chat}) + "\n")
    assert load_rows(path, "plain", RowKind.SFT, tokenizer=chat_tok).rows == [
        {"prompt": "<|user|>What color is the sky?\n<|assistant|>", "response": "Blue."}]
    with pytest.raises(DataError, match="a 'messages' row gives prompts and sft rows, not preference rows"):
        load_rows(path, "plain", RowKind.PREFERENCE)


def _parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_parquet_file_loads_at_the_default_format(tmp_path) -> None:
    rows = [json.loads(line) for line in (FIXTURES / "plain_preferences.jsonl").read_text().splitlines()]
    path = _parquet(rows, tmp_path / "pairs.parquet")
    cfg = load_config(None, [f"data.pref_train={path}"])
    assert read_rows(cfg, "pref_train", str(path)) == rows


def test_a_hub_layout_directory_loads(tmp_path) -> None:
    """A local copy of a hub dataset (data/<split>-*.parquet and a card's ``configs``) loads, its format (here
    UltraFeedback's) detected from the columns, the split named by data.splits."""
    from r2m.recipes.rehearsal import ultrafeedback

    root = ultrafeedback(tmp_path / "uf")
    cfg = load_config(None, [f"data.pref_train={root}", "data.splits.pref_train=test_prefs"])
    rows = read_rows(cfg, "pref_train", str(root))
    assert len(rows) == 6 and rows[0]["chosen"].startswith("Here is a line about")
    prompts = tmp_path / "prompts"
    _parquet([{"prompt": "The sky is"}, {"prompt": "The sun is"}], prompts / "data" / "train-00000-of-00001.parquet")
    cfg = load_config(None, [f"data.prompts={prompts}"])
    assert read_rows(cfg, "prompts", str(prompts)) == ["The sky is", "The sun is"]
    cfg = load_config(None, [f"data.pref_train={root}"])  # no split named: the default "train" is not there
    with pytest.raises(DataError, match=r"Bad split: train. Available splits: \[.train_prefs.*"
                                        r"\(set the split: data.train_split"):
        read_rows(cfg, "pref_train", str(root))


def test_errors_name_the_format_choice(tmp_path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "Why?"}) + "\n")
    cfg = load_config(None, [f"data.prompts={path}"])
    with pytest.raises(DataError, match=r"q.jsonl:1: missing field 'prompt' \(required: \['prompt'\]\) "
                                        r"\(format 'plain' expects .*; another schema: set data.format or "
                                        r"data.formats.<field> to one of plain, ultrafeedback, hh_rlhf"):
        read_rows(cfg, "prompts", str(path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": [{"role": "user", "content": "a"}], "completion": 3}) + "\n")
    cfg = load_config(None, [f"data.sft={bad}"])
    with pytest.raises(DataError, match=r"bad.jsonl: row 1: field 'completion' must be a string, got int \(format "
                                        r"'trl', detected from its columns, expects TRL's .*; another schema: set "
                                        r"data.format"):
        read_rows(cfg, "sft", str(bad))


def test_a_python_dataset_is_read_where_it_is_and_named_by_its_argument(tmp_path) -> None:
    from datasets import Dataset

    from r2m.data.sources import register_dataset

    good = Dataset.from_list([{"prompt": [{"role": "user", "content": "Hi"}]}])
    source = register_dataset(good, "train_dataset")
    assert source.startswith("python:train_dataset:")
    assert load_rows(source, "plain", RowKind.PROMPT).rows == [{"prompt": "User: Hi\n\nAssistant:"}]
    bad = Dataset.from_list([{"question": "Why?"}])
    with pytest.raises(DataError, match=r"^train_dataset: row 1: missing field 'prompt'"):
        load_rows(register_dataset(bad, "train_dataset"), "plain", RowKind.PROMPT)
    with pytest.raises(DataError, match=r"eval_dataset: expected a path, a datasets.Dataset or a "
                                        r"datasets.IterableDataset, got DatasetDict \(pick a split"):
        from datasets import DatasetDict

        register_dataset(DatasetDict({"train": good}), "eval_dataset")


def test_the_trainers_python_dataset_errors_name_train_dataset(world_artifacts, tmp_path) -> None:
    """RLTrainer(train_dataset=<a Dataset whose rows lack a prompt>): the error names the argument, no temp copy."""
    from datasets import Dataset

    import r2m

    policy, _, files = world_artifacts
    args = r2m.RLArguments(output_dir=str(tmp_path / "run"), max_steps=1, report_to="none",
                        overrides={"run.progress": False})
    trainer = r2m.RLTrainer(str(policy), lambda prompts, completions, **kw: [0.0] * len(completions), args=args,
                            train_dataset=Dataset.from_list([{"question": "Why?"}] * 4),
                            eval_dataset=str(files.eval_prompts))
    with pytest.raises(DataError, match=r"^train_dataset: row 1: missing field 'prompt' \(format 'plain'"):
        trainer.train()
    assert not (tmp_path / "run").exists()  # bad input leaves no run directory
