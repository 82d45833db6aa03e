"""TRL's dataset formats (``data.format=trl``), standard and conversational, detected per row by its columns.

| TRL type                      | columns                         | gives                  |
|-------------------------------|---------------------------------|------------------------|
| prompt-only                   | prompt                          | prompts                |
| prompt-completion             | prompt, completion              | prompts, sft           |
| preference (explicit prompt)  | prompt, chosen, rejected        | prompts, sft, pairs    |
| preference (implicit prompt)  | chosen, rejected                | prompts, sft, pairs    |
| language modeling             | messages (conversational only)  | prompts, sft           |

A source left at ``data.format=plain`` is read in TRL's format when its first row's columns are TRL's and not r2m's
plain schema (:func:`detect_format`), as TRL reads a dataset by its columns.

Standard rows hold strings; conversational rows hold ``[{"role", "content"}]`` message lists (the
prompt's messages; completion / chosen / rejected: the assistant's reply, or with an implicit prompt
the whole conversation). A conversational prompt is rendered with the reading model's chat template
(:func:`r2m.data.adapters.render_messages`), and the reward model renders it with its own
(:mod:`r2m.data.chat`). An implicit standard prompt is the common prefix of chosen and rejected cut before
its last space (a word boundary; see :func:`_common_prefix`).
"""

from __future__ import annotations

from typing import Mapping, Optional

from r2m.config.paths import DatasetFormat
from r2m.data.adapters import (AdapterContext, RowKind, _messages, _pair, _single, _text, render_messages)

TRL_COLUMNS = ("prompt", "chosen", "rejected", "completion", "messages")
"""The columns TRL reads (``trl.data_utils.is_conversational``'s keys)."""


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def is_conversational(row: Mapping) -> bool:
    """TRL's ``is_conversational``: a TRL column holding a list of ``{"role", ...}`` messages. TRL looks at one
    column, picked from a set (its choice varies between processes where string and message columns mix, as in
    UltraFeedback's prompt and chosen); this looks at each of them."""
    return any(_is_messages(row.get(k)) for k in TRL_COLUMNS)


def trl_type(row: Mapping) -> Optional[str]:
    """The TRL dataset type that a row's columns name (None: no TRL columns)."""
    has = {k for k in TRL_COLUMNS if row.get(k) is not None}
    if {"chosen", "rejected"} <= has:
        return "preference" if "prompt" in has else "preference with an implicit prompt"
    if "prompt" in has:
        return "prompt-completion" if "completion" in has else "prompt-only"
    return "language modeling" if "messages" in has else None


def _ultrafeedback_shaped(row: Mapping) -> bool:
    """UltraFeedback's layout (HuggingFaceH4/ultrafeedback_binarized): a string prompt and chosen/rejected holding
    the whole conversation, prompt included."""
    return isinstance(row.get("prompt"), str) and all(
        _is_messages(row.get(k)) and len(row[k]) >= 2 and row[k][-1].get("role") == "assistant"
        for k in ("chosen", "rejected"))


def _hh_shaped(row: Mapping) -> bool:
    """Anthropic/hh-rlhf's layout: chosen and rejected as whole "\n\nHuman: ... \n\nAssistant: ..." transcripts."""
    return "prompt" not in row and all(isinstance(row.get(k), str) and "\n\nAssistant:" in row[k]
                                       for k in ("chosen", "rejected"))


def detect_format(row: Mapping) -> DatasetFormat:
    """The format of a source left at ``data.format=plain``, from its first row: r2m's plain schema where it fits
    (a ``response`` column, or string prompt/chosen/rejected), UltraFeedback's and HH-RLHF's layouts (whose prompt
    their own adapters split off exactly), else TRL's formats when the columns are TRL's (conversational,
    prompt-completion, an implicit prompt, messages)."""
    if "response" in row:
        return DatasetFormat.PLAIN
    if _ultrafeedback_shaped(row):
        return DatasetFormat.ULTRAFEEDBACK
    if _hh_shaped(row):
        return DatasetFormat.HH_RLHF
    kind = trl_type(row)
    if is_conversational(row) or kind in ("prompt-completion", "preference with an implicit prompt",
                                          "language modeling"):
        return DatasetFormat.TRL
    return DatasetFormat.PLAIN


def _is_chat(value) -> bool:
    return isinstance(value, list)


def _reply(row: dict, key: str, ctx: AdapterContext) -> str:
    """The assistant's reply of a completion/chosen/rejected column: a string, or one assistant message."""
    value = row.get(key)
    if not _is_chat(value):
        return _text(row, key, ctx)
    if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant" \
            or not isinstance(value[0].get("content"), str):
        raise ctx.error(f"field '{key}' must be one assistant message [{{'role': 'assistant', 'content': str}}] "
                        f"with an explicit prompt, got {value!r:.80}")
    return value[0]["content"]


def _prompt(row: dict, ctx: AdapterContext) -> str:
    value = row.get("prompt")
    if not _is_chat(value):
        return _text(row, "prompt", ctx)
    messages = _field_messages(value, ctx)
    return render_messages(messages, ctx.tokenizer)


def _field_messages(value: list, ctx: AdapterContext) -> list[dict]:
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ctx.error(f"field 'prompt[{i}]' must be a {{'role': str, 'content': str}} message, got {m!r:.80}")
    if not value:
        raise ctx.error("field 'prompt' is an empty message list")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _common_prefix(a: str, b: str) -> str:
    """The implicit prompt of two strings: their common prefix, cut before its last space.

    TRL's ``extract_prompt`` keeps the common prefix up to the first differing character (minus a shared
    trailing space), which can end inside a word ("in the s" + "ky." / "ea."); r2m tokenises prompt and
    response apart, so it cuts at the word boundary instead and the responses keep their leading space.
    """
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    cut = a.rfind(" ", 0, i)  # -1 without a space: no prompt
    return a[:max(cut, 0)]


def _implicit(row: dict, ctx: AdapterContext) -> Optional[dict]:
    if _is_chat(row.get("chosen")):
        chosen, rejected = _messages(row, "chosen", ctx), _messages(row, "rejected", ctx)
        if chosen[:-1] != rejected[:-1]:
            return ctx.mismatch("prefix_mismatch", "'chosen' and 'rejected' differ before their last assistant message")
        return _pair(ctx, render_messages(chosen[:-1], ctx.tokenizer), chosen[-1]["content"], rejected[-1]["content"])
    chosen, rejected = _text(row, "chosen", ctx), _text(row, "rejected", ctx)
    prompt = _common_prefix(chosen, rejected)
    if not prompt:
        return ctx.mismatch("no_common_prompt", "'chosen' and 'rejected' share no prefix to use as the prompt")
    return _pair(ctx, prompt, chosen[len(prompt):], rejected[len(prompt):])


def _language_modeling(row: dict, ctx: AdapterContext) -> Optional[dict]:
    """A ``messages`` conversation: the prompt is every message before the last (an assistant's), the response that
    last message; it gives prompts and sft rows."""
    if ctx.kind == RowKind.PREFERENCE:
        raise ctx.error("a 'messages' row gives prompts and sft rows, not preference rows (it has no "
                        "'chosen'/'rejected')")
    messages = _messages(row, "messages", ctx)
    prompt = render_messages(messages[:-1], ctx.tokenizer)
    if ctx.kind == RowKind.PROMPT:
        return {"prompt": prompt}
    return _single(ctx, prompt, messages[-1]["content"])


def adapt(row: dict, ctx: AdapterContext) -> Optional[dict]:
    """One TRL row -> the richest plain row it gives."""
    has = {k for k, v in row.items() if v is not None}
    if {"chosen", "rejected"} <= has:
        if "prompt" not in has:
            return _implicit(row, ctx)
        return _pair(ctx, _prompt(row, ctx), _reply(row, "chosen", ctx), _reply(row, "rejected", ctx))
    if "prompt" not in has and "messages" in has:
        return _language_modeling(row, ctx)
    if "prompt" not in has:
        raise ctx.error("missing field 'prompt' (or 'chosen' and 'rejected' for an implicit prompt, or 'messages')")
    if "completion" in has:
        if ctx.kind == RowKind.PREFERENCE:
            raise ctx.error("a prompt-completion row gives prompts and sft rows, not preference rows (it has no "
                            "'chosen'/'rejected')")
        return _single(ctx, _prompt(row, ctx), _reply(row, "completion", ctx))
    if ctx.kind != RowKind.PROMPT:
        raise ctx.error(f"a prompt-only row gives prompts, not {ctx.kind.value} rows (it has no 'completion' "
                        "or 'chosen'/'rejected')")
    prompt = _prompt(row, ctx)
    return {"prompt": prompt} if prompt.strip() else ctx.skip("empty_prompt")
