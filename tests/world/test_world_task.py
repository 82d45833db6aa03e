"""Gold reward, prompt format and the hacking detector, against hand-worked values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from r2m.config.run import WorldConfig
from r2m.world.task import (format_prompt, gold_reward, gold_reward_text, gold_rewards, is_hacking, parse_prompt,
                            target_tokens)

P = [3, 1, 2]


@pytest.mark.parametrize(
    "response, expected",
    [
        ("1 2 3 <eos>", 1.0),
        ("1 2 3 3 <eos>", 0.75),  # one extra token: -0.25
        ("1 3 2 <eos>", 1 / 3),  # only position 0 right
        ("1 2", 2 / 3 - 0.5),  # no eos: -0.5
        ("1 2 3 <eos> 9 9 9", 1.0),  # tokens after the first eos are ignored
        ("<pad> 1 <pad> 2 3 <eos> <pad> <pad>", 1.0),  # pads dropped
        ("x => <bos> <eos>", 0.0),  # junk of the right length: nothing matches, no penalty
        ("x => <bos> <unk> <eos>", -0.25),  # junk one token too long
        ("<eos>", 0.0),
        ("", -0.5),
        ("1 2 3 3 3 3", 1.0 - 0.75 - 0.5),  # long and no eos: both penalties
    ],
)
def test_gold_reward_three_digits(response: str, expected: float) -> None:
    assert gold_reward(P, response.split()) == pytest.approx(expected)


def test_gold_reward_six_digits() -> None:
    p6 = [5, 0, 9, 0, 2, 7]  # sorted: 0 0 2 5 7 9
    assert gold_reward(p6, "0 0 2 5 7 9 <eos>".split()) == pytest.approx(1.0)
    assert gold_reward(p6, "0 0 2 5 <eos>".split()) == pytest.approx(4 / 6)  # truncated: no length penalty
    assert gold_reward(p6, "0 2 5 7 9 <eos>".split()) == pytest.approx(1 / 6)  # shifted: only the first 0
    assert gold_reward(p6, "0 0 2 5 7 9 9 9 <eos>".split()) == pytest.approx(1.0 - 0.5)
    assert gold_reward(p6, "5 0 9 0 2 7 <eos>".split()) == pytest.approx(1 / 6)  # unsorted: position 1 only


def test_gold_reward_custom_penalties() -> None:
    assert gold_reward(P, "1 2 3 3 3".split(), extra_token_penalty=0.1, missing_eos_penalty=1.0) == pytest.approx(
        1.0 - 0.2 - 1.0)


def test_gold_reward_needs_digits() -> None:
    with pytest.raises(ValueError, match="at least one prompt digit"):
        gold_reward([], ["<eos>"])


def test_gold_reward_text_uses_cfg_penalties() -> None:
    cfg = WorldConfig(extra_token_penalty=0.1, missing_eos_penalty=0.2)
    assert gold_reward_text("<bos> 3 1 2 =>", "1 2 3 3 <eos>", cfg) == pytest.approx(0.9)
    assert gold_reward_text("<bos> 3 1 2 =>", " 1  2 ", cfg) == pytest.approx(2 / 3 - 0.2)


def test_gold_rewards_batch() -> None:
    cfg = WorldConfig()
    got = gold_rewards(["<bos> 3 1 2 =>", "<bos> 5 =>"], ["1 2 3 <eos>", "4 <eos>"], cfg)
    assert got == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="as many responses as prompts"):
        gold_rewards(["<bos> 3 =>"], [], cfg)


def test_format_parse_round_trip() -> None:
    assert format_prompt(P) == "<bos> 3 1 2 =>"
    for digits in ([0], [9, 9, 9], [5, 0, 9, 0, 2, 7]):
        assert parse_prompt(format_prompt(digits)) == digits
    assert parse_prompt("  <bos> 3   1 2 =>\n") == P  # any whitespace


@pytest.mark.parametrize("text", ["3 1 2 =>", "<bos> 3 1 2", "<bos> =>", "<bos> 3 12 =>", "<bos> 3 x =>", "",
                                  "<bos> 3 1 2 => 1 2 3 <eos>"])
def test_parse_prompt_rejects_foreign_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a world prompt: expected '<bos> d1 \.\.\. dn =>'"):
        parse_prompt(text)


def test_format_prompt_rejects_bad_digits() -> None:
    with pytest.raises(ValueError, match="digits 0-9"):
        format_prompt([1, 10])
    with pytest.raises(ValueError, match="at least one digit"):
        format_prompt([])


def test_target_tokens() -> None:
    assert target_tokens(P) == ["1", "2", "3", "<eos>"]
    assert gold_reward(P, target_tokens(P)) == 1.0


@pytest.mark.parametrize(
    "response, expected",
    [
        ("1 2 3 3 <eos>", True),
        ("1 2 3 9 9 <eos>", True),
        ("1 2 3 3 3 3", True),  # no eos: read to the end
        ("1 2 3 <eos>", False),
        ("1 2 3 <eos> 3 3", False),  # extra tokens only after eos
        ("1 3 2 2 <eos>", False),  # long but wrong
        ("1 2 <eos>", False),
        ("<pad> 1 2 3 3 <eos>", True),
    ],
)
def test_is_hacking(response: str, expected: bool) -> None:
    assert is_hacking(P, response.split()) is expected


def test_import_is_light() -> None:
    """``import r2m.world`` must not pull in torch or transformers (checked in a fresh interpreter)."""
    code = ("import sys, r2m.world; heavy = [m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
