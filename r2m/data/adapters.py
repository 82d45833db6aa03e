"""Row adapters from public RLHF dataset schemas to r2m's plain rows, and the helpers they share (field
access with errors naming the row and field, chat rendering, the HH and TL;DR splits). The format
registry and the readers are in :mod:`r2m.data.datasets`; the TRL formats in :mod:`r2m.data.trl_formats`."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional, Sequence

from r2m.config.enums import OnMismatch
from r2m.config.paths import DatasetFormat, format_names
from r2m.data.chat import ChatPrompt, has_template, strip_bos_text
from r2m.data.jsonl import PREFERENCE_FIELDS, PROMPT_FIELDS, SFT_FIELDS
from r2m.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("r2m")

_NO_TEMPLATE_NOTED: set[str] = set()


class RowKind(str, Enum):
    """Which plain schema a loader returns."""

    PROMPT = "prompt"
    SFT = "sft"
    PREFERENCE = "preference"


KIND_FIELDS: dict[RowKind, tuple[str, ...]] = {
    RowKind.PROMPT: PROMPT_FIELDS,
    RowKind.SFT: SFT_FIELDS,
    RowKind.PREFERENCE: PREFERENCE_FIELDS,
}


# Prompt templates of the formats that build their prompt from fields.
TLDR_PROMPT_TEMPLATE = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


STACK_EXCHANGE_PROMPT_TEMPLATE = "Question: {question}\n\nAnswer: "


HH_ASSISTANT = "\n\nAssistant:"


_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass
class AdapterContext:
    """Everything an adapter needs besides the row; it also counts the rows adapters skip."""

    source: str
    """The file or hub name, for error messages."""
    fmt: DatasetFormat
    """The format being read, for error messages."""
    kind: RowKind
    """The plain schema asked for (PLAIN validates against it)."""
    expects: str = ""
    """The format's schema, as error messages state it (:data:`r2m.data.datasets.FORMATS`)."""
    tokenizer: Optional["PreTrainedTokenizerBase"] = None
    """Renders chat prompts with its chat template, when it has one."""
    on_mismatch: OnMismatch = OnMismatch.SKIP
    """Pairs whose chosen and rejected do not share a prompt: skip (counted) or error."""
    index: int = 0
    """1-based number of the row being adapted (the line number of a JSONL file without blank lines)."""
    skipped: Counter = field(default_factory=Counter)
    """Reason -> rows skipped so far."""
    detected: bool = False
    """The format was detected from the columns (the source was left at data.format=plain)."""

    def error(self, problem: str) -> DataError:
        how = ", detected from its columns," if self.detected else ""
        return DataError(f"{self.source}: row {self.index}: {problem} "
                         f"(format '{self.fmt.value}'{how} expects {self.expects}; {format_hint()})")

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        return None

    def mismatch(self, reason: str, problem: str) -> None:
        if self.on_mismatch == OnMismatch.ERROR:
            raise self.error(problem)
        return self.skip(reason)


Adapter = Callable[[dict, AdapterContext], Optional[dict]]


def format_hint() -> str:
    """The format choice, as errors about a row's schema state it."""
    return f"another schema: set data.format or data.formats.<field> to one of {', '.join(format_names())}"


def _field(container: dict, key: str, ctx: AdapterContext, kind: type, what: str, label: Optional[str] = None) -> Any:
    """``container[key]``, checked to be a ``kind``; ``label`` is the dotted name errors show."""
    label = label or key
    value = container.get(key)
    # Arrow fills a key absent from some JSONL rows with None, so None reads as missing.
    if value is None:
        raise ctx.error(f"missing field '{label}'")
    # bool is an int subclass, but a boolean is never a valid index or text here.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ctx.error(f"field '{label}' must be {what}, got {type(value).__name__}")
    return value


def _text(container: dict, key: str, ctx: AdapterContext, label: Optional[str] = None) -> str:
    return _field(container, key, ctx, str, "a string", label)


def _messages(row: dict, key: str, ctx: AdapterContext) -> list[dict]:
    """A chat: a list of {role, content} messages that ends with the assistant's reply."""
    messages = _field(row, key, ctx, list, "a list of {'role', 'content'} messages")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ctx.error(f"field '{key}[{i}]' must be a {{'role': str, 'content': str}} message, got {m!r:.80}")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise ctx.error(f"field '{key}' must hold the prompt's messages and then an assistant message")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _note_no_template(tokenizer) -> None:
    """Log once per tokenizer that chat prompts are rendered as plain "User: ... Assistant:" text."""
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    if name not in _NO_TEMPLATE_NOTED:
        _NO_TEMPLATE_NOTED.add(name)
        log.info("tokenizer %s has no chat template: chat prompts are rendered as plain "
                 "'User: ...\\n\\nAssistant:' text", name)


def render_messages(messages: Sequence[dict], tokenizer: Optional["PreTrainedTokenizerBase"] = None) -> str:
    """The prompt text for ``messages``, ending where the assistant's reply starts, carrying the messages.

    With a tokenizer that has a chat template: the template with ``add_generation_prompt``. Otherwise
    "User: ...\n\nAssistant: ...\n\nAssistant:". With a tokenizer the result is a :class:`r2m.data.chat.ChatPrompt`:
    a reward model renders the same messages with its own template (:class:`r2m.data.chat.RMRenderer`).
    """
    if tokenizer is not None and has_template(tokenizer):
        try:
            text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        except Exception as e:  # jinja's TemplateError and whatever a template raises itself
            raise DataError(f"the chat template of {tokenizer.name_or_path} cannot render a prompt's messages "
                            f"({type(e).__name__}: {e}); fix the tokenizer's chat_template") from e
        # r2m tokenises prompts with add_special_tokens=True; a template that writes the BOS text
        # itself would then give two BOS tokens, so the template's copy goes.
        return ChatPrompt(strip_bos_text(text, tokenizer), messages)
    if tokenizer is not None:
        _note_no_template(tokenizer)
    turns = [f"{_ROLE_NAMES.get(m['role'], m['role'].capitalize())}: {m['content']}" for m in messages]
    text = "\n\n".join([*turns, "Assistant:"])
    # No tokenizer: no model reads these rows as a policy (SER's model-agnostic splits), so they stay plain
    # text that every model reads alike, as before.
    return ChatPrompt(text, messages) if tokenizer is not None else text


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    return TLDR_PROMPT_TEMPLATE.format(subreddit=subreddit, title=title, post=post)


class Split(NamedTuple):
    prompt: str
    response: str


def split_hh(transcript: str) -> Optional[Split]:
    """Split an HH-RLHF transcript after its last "\\n\\nAssistant:"; None without one."""
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0:
        return None
    end = cut + len(HH_ASSISTANT)
    return Split(transcript[:end], transcript[end:])


def _pair(ctx: AdapterContext, prompt: str, chosen: str, rejected: str) -> Optional[dict]:
    # An empty rejected only matters when pairs are asked for; SFT and prompts still use the row.
    if not chosen.strip() or (ctx.kind == RowKind.PREFERENCE and not rejected.strip()):
        return ctx.skip("empty_response")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _single(ctx: AdapterContext, prompt: str, response: str) -> Optional[dict]:
    if not response.strip():
        return ctx.skip("empty_response")
    return {"prompt": prompt, "response": response}


def _plain(row: dict, ctx: AdapterContext) -> Optional[dict]:
    """Same rules as :func:`r2m.data.jsonl.read_jsonl`; extra fields are kept."""
    for name in KIND_FIELDS[ctx.kind]:
        if not _text(row, name, ctx).strip():
            raise ctx.error(f"field '{name}' is empty")
    if ctx.kind == RowKind.PREFERENCE and row["chosen"] == row["rejected"]:
        raise ctx.error("'chosen' is identical to 'rejected'")
    return dict(row)


def _ultrafeedback(row: dict, ctx: AdapterContext) -> Optional[dict]:
    chosen, rejected = _messages(row, "chosen", ctx), _messages(row, "rejected", ctx)
    if chosen[:-1] != rejected[:-1]:
        return ctx.mismatch("prefix_mismatch", "'chosen' and 'rejected' differ before their last assistant message")
    return _pair(ctx, render_messages(chosen[:-1], ctx.tokenizer), chosen[-1]["content"], rejected[-1]["content"])


def _hh_rlhf(row: dict, ctx: AdapterContext) -> Optional[dict]:
    chosen, rejected = split_hh(_text(row, "chosen", ctx)), split_hh(_text(row, "rejected", ctx))
    if chosen is None or rejected is None:
        name = "chosen" if chosen is None else "rejected"
        return ctx.mismatch("no_assistant_turn", f"field '{name}' has no '\\n\\nAssistant:' turn")
    if chosen.prompt != rejected.prompt:
        return ctx.mismatch("prefix_mismatch", "'chosen' and 'rejected' differ before their last '\\n\\nAssistant:'")
    return _pair(ctx, chosen.prompt, chosen.response, rejected.response)


def _tldr(row: dict, ctx: AdapterContext) -> Optional[dict]:
    return _single(ctx, _text(row, "prompt", ctx), _text(row, "completion", ctx))


def _tldr_comparison(row: dict, ctx: AdapterContext) -> Optional[dict]:
    info = _field(row, "info", ctx, dict, "an object {post, title, subreddit}")
    summaries = _field(row, "summaries", ctx, list, "a list of two {text} objects")
    choice = _field(row, "choice", ctx, int, "0 or 1")
    if len(summaries) != 2 or not all(isinstance(s, dict) for s in summaries):
        raise ctx.error(f"field 'summaries' must hold two {{text}} objects, got {len(summaries)} items")
    if choice not in (0, 1):
        raise ctx.error(f"field 'choice' must be 0 or 1, got {choice}")
    # The comparisons also rate CNN/DailyMail articles, which have no Reddit post to build a prompt from.
    if info.get("post") is None:
        return ctx.skip("no_post")
    prompt = tldr_prompt(_text(info, "subreddit", ctx, "info.subreddit"), _text(info, "title", ctx, "info.title"),
                         _text(info, "post", ctx, "info.post"))
    texts = [_text(s, "text", ctx, f"summaries[{i}].text") for i, s in enumerate(summaries)]
    return _pair(ctx, prompt, texts[choice], texts[1 - choice])


def _tldr_preference(row: dict, ctx: AdapterContext) -> Optional[dict]:
    # The comparison fields win when both schemas are present (the trl-style dumps carry both, with
    # chosen/rejected as message lists), since they give the canonical prompt.
    if row.get("summaries") is not None:
        return _tldr_comparison(row, ctx)
    return _pair(ctx, _text(row, "prompt", ctx), _text(row, "chosen", ctx), _text(row, "rejected", ctx))


def _stack_exchange(row: dict, ctx: AdapterContext) -> Optional[dict]:
    prompt = STACK_EXCHANGE_PROMPT_TEMPLATE.format(question=_text(row, "question", ctx))
    return _pair(ctx, prompt, _text(row, "response_j", ctx), _text(row, "response_k", ctx))
