"""World tokenizers: text round trips, no automatic specials, save/reload, distinct RM layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from r2m.world.tokenizer import build_tokenizer, save_tokenizer

TEXT = "<bos> 3 1 2 => 1 2 3 <eos>"


@pytest.fixture(scope="module")
def policy_tok():
    return build_tokenizer("policy")


@pytest.fixture(scope="module")
def rm_tok():
    return build_tokenizer("rm")


def test_round_trip(policy_tok) -> None:
    ids = policy_tok(TEXT)["input_ids"]
    assert len(ids) == len(TEXT.split())
    assert policy_tok.convert_ids_to_tokens(ids) == TEXT.split()
    assert policy_tok.decode(ids, skip_special_tokens=False) == TEXT
    assert policy_tok.decode(ids, skip_special_tokens=True) == "3 1 2 => 1 2 3"
    assert policy_tok.unk_token_id not in ids


def test_no_special_tokens_added(policy_tok) -> None:
    ids = policy_tok("3 1 2")["input_ids"]
    assert ids == policy_tok.convert_tokens_to_ids(["3", "1", "2"])
    assert policy_tok("3 1 2", add_special_tokens=True)["input_ids"] == ids


def test_special_tokens_and_settings(policy_tok) -> None:
    tok = policy_tok
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert tok.padding_side == "left"
    assert tok.model_max_length == 64
    assert len(tok) == 15
    assert tok("<bos> 7 x =>")["input_ids"][2] == tok.unk_token_id


def test_left_padding(policy_tok) -> None:
    batch = policy_tok(["<bos> 3 =>", "<bos> 3 1 2 =>"], padding=True)
    assert batch["input_ids"][0][:2] == [policy_tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1]
    assert batch["input_ids"][0][-1] == batch["input_ids"][1][-1]  # both end on "=>"


@pytest.mark.parametrize("variant", ["policy", "rm"])
def test_save_reload(tmp_path: Path, variant: str) -> None:
    from transformers import AutoTokenizer

    tok = build_tokenizer(variant)
    save_tokenizer(tok, tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert again.get_vocab() == tok.get_vocab()
    assert again(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    for name in ("pad", "bos", "eos", "unk"):
        assert getattr(again, f"{name}_token") == getattr(tok, f"{name}_token")
        assert getattr(again, f"{name}_token_id") == getattr(tok, f"{name}_token_id")
    assert again.padding_side == "left"
    assert again.decode(again(TEXT)["input_ids"]) == TEXT
    assert again("3 1 2")["input_ids"] == again.convert_tokens_to_ids(["3", "1", "2"])


def test_rm_variant_differs_but_round_trips(policy_tok, rm_tok) -> None:
    p_ids, r_ids = policy_tok(TEXT)["input_ids"], rm_tok(TEXT)["input_ids"]
    assert p_ids != r_ids
    assert len(rm_tok) != len(policy_tok)
    assert rm_tok.decode(r_ids) == policy_tok.decode(p_ids) == TEXT
    assert rm_tok.pad_token_id != policy_tok.pad_token_id
    assert rm_tok("3 1 2")["input_ids"] == rm_tok.convert_tokens_to_ids(["3", "1", "2"])


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        build_tokenizer("critic")
