"""Dataset adapters: each public schema (fixtures in tests/fixtures/) to r2m's plain rows, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from r2m.data.jsonl import read_preferences
from r2m.data.datasets import ADAPTERS, FORMATS, load_preferences, load_prompts, load_rows, load_sft
from r2m.data.adapters import AdapterContext, RowKind, render_messages
from r2m.config.paths import DatasetFormat
from r2m.config.enums import OnMismatch
from r2m.errors import ConfigError, DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UF = FIXTURES / "ultrafeedback.jsonl"
HH = FIXTURES / "hh_rlhf.jsonl"

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture()
def tok():
    """The world's word-level tokenizer: one token per space-separated word (unknown words -> <unk>)."""
    from r2m.world.tokenizer import build_tokenizer

    return build_tokenizer("policy")


@pytest.fixture()
def chat_tok(tok):
    tok.chat_template = TEMPLATE
    return tok


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------
# UltraFeedback
# ---------------------------------------------------------------------------------------------


def test_ultrafeedback_plain_rendering() -> None:
    rows = load_preferences(UF, DatasetFormat.ULTRAFEEDBACK)
    assert rows == [
        {"prompt": "User: Name a primary colour.\n\nAssistant:", "chosen": "Red is a primary colour.",
         "rejected": "Green, probably."},
        {"prompt": "User: What is 2 + 2?\n\nAssistant:", "chosen": "2 + 2 = 4.", "rejected": "It is 5."},
        {"prompt": "User: Hi!\n\nAssistant: Hello! How can I help?\n\nUser: Tell me a fact.\n\nAssistant:",
         "chosen": "Honey never spoils if it is sealed well and kept dry .", "rejected": "No."},
    ]


def test_ultrafeedback_tokenizer_without_template_falls_back(tok) -> None:
    first = load_prompts(UF, "ultrafeedback", tokenizer=tok)[0]
    assert first == {"prompt": "User: Name a primary colour.\n\nAssistant:"}


def test_ultrafeedback_chat_template(chat_tok) -> None:
    rows = load_preferences(UF, "ultrafeedback", tokenizer=chat_tok)
    assert rows[0]["prompt"] == "<|user|>Name a primary colour.\n<|assistant|>"
    assert rows[2]["prompt"] == ("<|user|>Hi!\n<|assistant|>Hello! How can I help?\n<|user|>Tell me a fact.\n"
                                 "<|assistant|>")
    assert rows[2]["chosen"] == "Honey never spoils if it is sealed well and kept dry ."


def test_chat_template_bos_is_not_doubled(tok) -> None:
    """A template that writes BOS, with a tokenizer that adds BOS itself: the prompt drops the written one."""
    from tokenizers.processors import TemplateProcessing

    msgs = [{"role": "user", "content": "hi"}]
    tok.chat_template = "{{ bos_token }}" + TEMPLATE
    assert render_messages(msgs, tok) == "<bos><|user|>hi\n<|assistant|>"  # the tokenizer adds no BOS: kept
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    assert render_messages(msgs, tok) == "<|user|>hi\n<|assistant|>"


def test_ultrafeedback_sft_takes_chosen() -> None:
    assert load_sft(UF, "ultrafeedback")[1] == {"prompt": "User: What is 2 + 2?\n\nAssistant:",
                                                "response": "2 + 2 = 4."}


# ---------------------------------------------------------------------------------------------
# HH-RLHF
# ---------------------------------------------------------------------------------------------


def test_hh_rlhf_split_and_mismatch_skipped() -> None:
    loaded = load_rows(HH, "hh_rlhf", RowKind.PREFERENCE)
    assert loaded.rows == [
        {"prompt": "\n\nHuman: What is a good name for a cat?\n\nAssistant:", "chosen": " How about Miso?",
         "rejected": " Cats do not need names."},
        {"prompt": "\n\nHuman: Can you help me bake bread?\n\nAssistant: Sure. Do you have yeast?\n\nHuman: Yes."
                   "\n\nAssistant:",
         "chosen": " Great, then start with flour, water, yeast and salt.", "rejected": " Buy bread instead."},
    ]
    assert (loaded.report.read, loaded.report.kept, loaded.report.skipped) == (3, 2, {"prefix_mismatch": 1})
    raw = [json.loads(line) for line in HH.read_text().splitlines()]
    assert loaded.rows[1]["prompt"] + loaded.rows[1]["chosen"] == raw[1]["chosen"]  # nothing lost at the cut


def test_hh_rlhf_mismatch_as_error() -> None:
    with pytest.raises(DataError, match=r"hh_rlhf.jsonl: row 3: 'chosen' and 'rejected' differ"):
        load_preferences(HH, "hh_rlhf", on_mismatch=OnMismatch.ERROR)


def test_hh_rlhf_without_assistant_turn(tmp_path) -> None:
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
        {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: no"},
    ])
    assert load_rows(path, "hh_rlhf", RowKind.PREFERENCE).report.skipped == {"no_assistant_turn": 1}
    with pytest.raises(DataError, match=r"row 2: field 'chosen' has no"):
        load_preferences(path, "hh_rlhf", on_mismatch=OnMismatch.ERROR)


# ---------------------------------------------------------------------------------------------
# TL;DR
# ---------------------------------------------------------------------------------------------


def test_tldr_sft_and_prompts() -> None:
    path = FIXTURES / "tldr.jsonl"
    sft = load_sft(path, "tldr")
    assert sft[1] == {
        "prompt": "SUBREDDIT: r/running\n\nTITLE: First 10k done\n\nPOST: After six months of training I finished "
                  "my first 10k race today.\n\nTL;DR:",
        "response": " trained for six months and ran my first 10k."}
    assert load_prompts(path, "tldr") == [{"prompt": r["prompt"]} for r in sft]
    with pytest.raises(DataError, match="format 'tldr' gives .* not preference rows"):
        load_preferences(path, "tldr")


def test_tldr_preference_strings() -> None:
    rows = load_preferences(FIXTURES / "tldr_preference.jsonl", "tldr_preference")
    assert rows[0] == {
        "prompt": "SUBREDDIT: r/cats\nTITLE: Cat ignores new toy\nPOST: I bought a laser pointer and my cat just "
                  "stares at me.\nTL;DR:",
        "chosen": " my cat ignores the laser pointer I bought.", "rejected": " cats are weird."}


def test_tldr_comparisons_choice_orientation() -> None:
    loaded = load_rows(FIXTURES / "tldr_comparisons.jsonl", "tldr_preference", RowKind.PREFERENCE)
    assert loaded.rows == [
        {"prompt": "SUBREDDIT: r/relationships\nTITLE: My friend keeps cancelling plans\n"
                   "POST: We set dates and she cancels the day before, every time.\nTL;DR:",
         "chosen": " friend always cancels plans last minute.", "rejected": " I have a friend."},  # choice 0
        {"prompt": "SUBREDDIT: r/personalfinance\nTITLE: Should I pay off my car loan early?\n"
                   "POST: The loan is at 3% and I have savings.\nTL;DR:",
         "chosen": " 3% car loan and savings: pay it off early or invest?", "rejected": " car loan."},  # choice 1
    ]
    assert loaded.report.skipped == {"no_post": 1}  # the CNN/DM comparison


def test_tldr_comparison_bad_choice(tmp_path) -> None:
    row = json.loads((FIXTURES / "tldr_comparisons.jsonl").read_text().splitlines()[0])
    path = write_jsonl(tmp_path / "c.jsonl", [row, {**row, "choice": 2}])
    with pytest.raises(DataError, match=r"c.jsonl: row 2: field 'choice' must be 0 or 1, got 2"):
        load_preferences(path, "tldr_preference")


# ---------------------------------------------------------------------------------------------
# StackExchange
# ---------------------------------------------------------------------------------------------


def test_stack_exchange_pairs_and_unique_prompts() -> None:
    path = FIXTURES / "stack_exchange.jsonl"
    rows = load_preferences(path, "stack_exchange")
    assert rows[0] == {"prompt": "Question: How do I reverse a list in Python?\n\nAnswer: ",
                       "chosen": "Use `reversed(xs)` or `xs[::-1]`.", "rejected": "Write a loop."}
    assert len(rows) == 3
    prompts = load_rows(path, "stack_exchange", RowKind.PROMPT)
    assert [r["prompt"] for r in prompts.rows] == ["Question: How do I reverse a list in Python?\n\nAnswer: ",
                                                   "Question: What does `git stash` do?\n\nAnswer: "]
    assert prompts.report.skipped == {"duplicate_prompt": 1}


# ---------------------------------------------------------------------------------------------
# Length filter
# ---------------------------------------------------------------------------------------------


def test_length_filter_counts(tok) -> None:
    # Chosen responses have 5, 5 and 12 words: one token each with the world tokenizer.
    loaded = load_rows(UF, "ultrafeedback", RowKind.PREFERENCE, tokenizer=tok, max_response_tokens=5)
    assert [r["chosen"] for r in loaded.rows] == ["Red is a primary colour.", "2 + 2 = 4."]
    assert (loaded.report.read, loaded.report.kept, loaded.report.dropped_long) == (3, 2, 1)
    # Prompts are filtered by their row's chosen response too, so they match the pairs.
    assert len(load_prompts(UF, "ultrafeedback", tokenizer=tok, max_response_tokens=5)) == 2
    assert load_rows(UF, "ultrafeedback", RowKind.SFT, tokenizer=tok, max_response_tokens=12).report.dropped_long == 0
    with pytest.raises(DataError, match="no rows left: .*dropped 3 over max_response_tokens"):
        load_preferences(UF, "ultrafeedback", tokenizer=tok, max_response_tokens=4)
    with pytest.raises(ConfigError, match="max_response_tokens"):
        load_preferences(UF, "ultrafeedback", max_response_tokens=5)


# ---------------------------------------------------------------------------------------------
# Schema errors
# ---------------------------------------------------------------------------------------------


def test_missing_field_names_row_and_field(tmp_path) -> None:
    path = write_jsonl(tmp_path / "se.jsonl", [
        {"question": "q1", "response_j": "a", "response_k": "b"},
        {"question": "q2", "response_j": "a"},
    ])
    with pytest.raises(DataError) as err:
        load_preferences(path, "stack_exchange")
    msg = str(err.value)
    assert f"{path}: row 2: missing field 'response_k'" in msg and "'response_j' (preferred)" in msg


@pytest.mark.parametrize("fmt, row, message", [
    (DatasetFormat.ULTRAFEEDBACK, {"chosen": "hi", "rejected": []}, "field 'chosen' must be a list"),
    (DatasetFormat.ULTRAFEEDBACK, {"chosen": [{"role": "user", "content": "q"}], "rejected": []},
     "field 'chosen' must hold the prompt's messages and then an assistant message"),
    (DatasetFormat.ULTRAFEEDBACK, {"chosen": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
     r"field 'chosen\[0\]' must be a \{'role': str, 'content': str\} message"),
    (DatasetFormat.HH_RLHF, {"chosen": 3, "rejected": "x"}, "field 'chosen' must be a string, got int"),
    (DatasetFormat.TLDR, {"prompt": "p"}, "missing field 'completion'"),
    (DatasetFormat.TLDR_PREFERENCE, {"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
    (DatasetFormat.TLDR_PREFERENCE, {"info": {"post": "x", "title": "t"}, "summaries": [{"text": "a"}, {"text": "b"}],
                                     "choice": 0}, "missing field 'info.subreddit'"),
    (DatasetFormat.TLDR_PREFERENCE, {"info": {}, "summaries": [{"text": "a"}], "choice": 0},
     "field 'summaries' must hold two"),
    (DatasetFormat.STACK_EXCHANGE, {"question": "q", "response_j": None, "response_k": "b"},
     "missing field 'response_j'"),
    (DatasetFormat.PLAIN, {"prompt": "p", "chosen": " ", "rejected": "b"}, "field 'chosen' is empty"),
    (DatasetFormat.PLAIN, {"prompt": "p", "chosen": "a", "rejected": "a"}, "'chosen' is identical to 'rejected'"),
])
def test_adapter_schema_errors(fmt, row, message) -> None:
    ctx = AdapterContext("src", fmt, RowKind.PREFERENCE, FORMATS[fmt].expects, index=7)
    with pytest.raises(DataError, match=message) as err:
        ADAPTERS[fmt](row, ctx)
    assert str(err.value).startswith("src: row 7: ") and f"format '{fmt.value}' expects" in str(err.value)


def test_every_format_has_an_adapter() -> None:
    assert set(ADAPTERS) == set(DatasetFormat)


def test_unknown_format() -> None:
    with pytest.raises(ConfigError, match="dataset format: expected one of"):
        load_preferences(UF, "ultra")


def test_empty_and_identical_pairs_are_skipped(tmp_path) -> None:
    path = write_jsonl(tmp_path / "se.jsonl", [
        {"question": "q1", "response_j": "a", "response_k": "b"},
        {"question": "q2", "response_j": "same", "response_k": "same"},
        {"question": "q3", "response_j": "  ", "response_k": "b"},
    ])
    loaded = load_rows(path, "stack_exchange", RowKind.PREFERENCE)
    assert loaded.report.skipped == {"identical_pair": 1, "empty_response": 1} and len(loaded.rows) == 1
    assert len(load_sft(path, "stack_exchange")) == 2  # identical pairs still give SFT rows


# ---------------------------------------------------------------------------------------------
# Plain, Parquet, hub names
# ---------------------------------------------------------------------------------------------


def test_plain_jsonl_matches_r2m_data() -> None:
    path = FIXTURES / "plain_preferences.jsonl"
    assert load_preferences(path) == read_preferences(path)  # extra fields kept, same validation


def test_plain_jsonl_errors_name_the_line(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: missing field 'response'"):
        load_sft(path)


def test_parquet_loading(tmp_path) -> None:
    from datasets import Dataset

    rows = [json.loads(line) for line in UF.read_text().splitlines()]
    path = tmp_path / "train_prefs.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    assert load_preferences(path, "ultrafeedback", split="train_prefs") == load_preferences(UF, "ultrafeedback")


def test_plain_parquet_validated(tmp_path) -> None:
    from datasets import Dataset

    path = tmp_path / "pairs.parquet"
    Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"},
                       {"prompt": "p", "chosen": "c", "rejected": "c"}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"pairs.parquet: row 2: 'chosen' is identical to 'rejected'"):
        load_preferences(path, "plain")
    assert load_prompts(path, "plain") == [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                          {"prompt": "p", "chosen": "c", "rejected": "c"}]


def test_missing_file_and_offline_hub_name(tmp_path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_preferences(tmp_path / "nope.parquet", "ultrafeedback")
    # HF_HUB_OFFLINE=1 (conftest): a hub name that is not cached fails without reaching the network.
    with pytest.raises(DataError, match="cannot load with datasets.load_dataset"):
        load_preferences("r2m-tests/not-a-dataset", "ultrafeedback")


def test_rm_trains_on_a_real_schema_through_the_cli(tiny, world_artifacts, tmp_path) -> None:
    """`r2m rm data.format=ultrafeedback data.pref_train=...`: the adapter path is wired end to end."""
    from r2m.cli import main
    from r2m.config.parsing import load_config
    from r2m.recipes.pipeline import ensure_world_rm_backbone
    from r2m.runtime.runlog import read_metrics

    fixture = FIXTURES / "ultrafeedback.jsonl"
    held_out = Path(shutil.copy(fixture, tmp_path / "ultrafeedback_eval.jsonl"))  # one file for both is refused
    backbone = ensure_world_rm_backbone(load_config(None, tiny))
    args = [*tiny, f"run.root={tmp_path}", "run.name=uf", f"rm.init_from={backbone}", "data.format=ultrafeedback",
            f"data.pref_train={fixture}", f"data.pref_eval={held_out}"]
    assert main(["rm", *args]) == 0
    rows = read_metrics(tmp_path / "uf" / "metrics.jsonl")
    assert any("rm/loss" in r for r in rows) and any("rm/eval_acc" in r for r in rows)


def test_unknown_format_is_a_config_error() -> None:
    from r2m.config.parsing import load_config
    from r2m.errors import ConfigError

    with pytest.raises(ConfigError, match="data.format: expected one of"):
        load_config(None, ["data.format=alpaca"])
