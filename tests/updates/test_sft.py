"""r2m.updates.sft: tokenisation with the prompt masked out of the labels, and the count of cut rows."""

from __future__ import annotations

from r2m.updates.sft import IGNORE, count_truncated, tokenize_sft
from r2m.world.tokenizer import build_tokenizer

ROWS = [{"prompt": "3 1 2 ->", "response": " 1 2 3 <eos>"}, {"prompt": "5 4 ->", "response": " 4 5 <eos>"}]


def test_labels_ignore_the_prompt_and_long_rows_are_cut() -> None:
    tok = build_tokenizer("policy")
    (ids, labels), (ids2, labels2) = tokenize_sft(tok, ROWS, max_length=64)
    p = tok(ROWS[0]["prompt"], add_special_tokens=True)["input_ids"]
    r = tok(ROWS[0]["response"], add_special_tokens=False)["input_ids"]
    assert ids == p + r and labels == [IGNORE] * len(p) + r
    assert count_truncated(tok, ROWS, 64) == 0
    short = len(ids2) - 1
    cut = tokenize_sft(tok, ROWS, max_length=short)
    assert all(len(i) <= short and len(i) == len(lab) for i, lab in cut)
    assert count_truncated(tok, ROWS, short) == sum(len(i) > short for i, _ in [(ids, 0), (ids2, 0)])
