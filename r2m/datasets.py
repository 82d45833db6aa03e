"""Adapters from public RLHF datasets to r2m's plain rows (see docs/DATA.md).

Every loader returns the schemas of :mod:`r2m.data`:

- prompts:     {"prompt": str}
- sft:         {"prompt": str, "response": str}
- preferences: {"prompt": str, "chosen": str, "rejected": str}

The prompt is the rendered text the policy continues; responses are plain text. Prompt and
response are tokenised separately downstream (see :meth:`r2m.models.reward.RewardModel.tokenize`),
so a split keeps ``prompt + response`` equal to the original text (HH-RLHF and TL;DR responses keep
their leading space).

Sources are local ``.jsonl``/``.json``/``.parquet`` files, local directories, or hub dataset names,
all read through ``datasets.load_dataset`` (never with ``trust_remote_code``). A row that does not
match its format's schema raises :class:`DataError` naming the source, the row (1-based) and the
field; rows that match the schema but cannot be used (an empty response, chosen and rejected that do
not share a prompt) are skipped and counted in a :class:`LoadReport`.

``datasets`` and ``transformers`` are imported inside the functions so that ``r2m.config`` can
import :class:`DatasetFormat` cheaply.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Optional, Sequence, Union

from r2m.chat import ChatPrompt, has_template, strip_bos_text
from r2m.data import PREFERENCE_FIELDS, PROMPT_FIELDS, SFT_FIELDS, read_jsonl
from r2m.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("r2m")


class DatasetFormat(str, Enum):
    """The schema of a source dataset."""

    PLAIN = "plain"
    """r2m's own JSONL schemas (:mod:`r2m.data`)."""
    ULTRAFEEDBACK = "ultrafeedback"
    """``HuggingFaceH4/ultrafeedback_binarized``: chosen/rejected as chat message lists."""
    HH_RLHF = "hh_rlhf"
    """``Anthropic/hh-rlhf``: chosen/rejected as full Human/Assistant transcripts."""
    TLDR = "tldr"
    """``trl-lib/tldr``: prompt/completion (SFT demonstrations, no pairs)."""
    TLDR_PREFERENCE = "tldr_preference"
    """``trl-lib/tldr-preference`` (prompt/chosen/rejected) or the OpenAI comparisons (info/summaries/choice)."""
    STACK_EXCHANGE = "stack_exchange"
    """``lvwerra/stack-exchange-paired``: question, response_j (preferred), response_k."""
    TRL = "trl"
    """TRL's standard and conversational formats (prompt-only, prompt-completion, preference with an explicit
    or implicit prompt), detected per row by its columns (:mod:`r2m.dataset_trl`)."""


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


class OnMismatch(str, Enum):
    """What to do with a pair whose chosen and rejected do not share one prompt."""

    SKIP = "skip"
    """Drop the row and count it (real dumps hold a few such rows)."""
    ERROR = "error"
    """Raise :class:`DataError` naming the row."""


# Prompt templates of the formats that build their prompt from fields.
TLDR_PROMPT_TEMPLATE = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
STACK_EXCHANGE_PROMPT_TEMPLATE = "Question: {question}\n\nAnswer: "
HH_ASSISTANT = "\n\nAssistant:"
_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


# ---------------------------------------------------------------------------------------------
# Adapter context and field access
# ---------------------------------------------------------------------------------------------


@dataclass
class AdapterContext:
    """Everything an adapter needs besides the row; it also counts the rows adapters skip."""

    source: str
    """The file or hub name, for error messages."""
    fmt: DatasetFormat
    """The format being read, for error messages."""
    kind: RowKind
    """The plain schema asked for (PLAIN validates against it)."""
    tokenizer: Optional["PreTrainedTokenizerBase"] = None
    """Renders chat prompts with its chat template, when it has one."""
    on_mismatch: OnMismatch = OnMismatch.SKIP
    """Pairs whose chosen and rejected do not share a prompt: skip (counted) or error."""
    index: int = 0
    """1-based number of the row being adapted (the line number of a JSONL file without blank lines)."""
    skipped: Counter = field(default_factory=Counter)
    """Reason -> rows skipped so far."""

    def error(self, problem: str) -> DataError:
        return DataError(f"{self.source}: row {self.index}: {problem} "
                         f"(format '{self.fmt.value}' expects {FORMATS[self.fmt].expects})")

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        return None

    def mismatch(self, reason: str, problem: str) -> None:
        if self.on_mismatch == OnMismatch.ERROR:
            raise self.error(problem)
        return self.skip(reason)


Adapter = Callable[[dict, AdapterContext], Optional[dict]]


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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


_NO_TEMPLATE_NOTED: set[str] = set()


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
    "User: ...\n\nAssistant: ...\n\nAssistant:". With a tokenizer the result is a :class:`r2m.chat.ChatPrompt`:
    a reward model renders the same messages with its own template (:class:`r2m.chat.RMRenderer`).
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


# ---------------------------------------------------------------------------------------------
# Adapters: one source row -> the richest plain row the format gives, or None (skipped)
# ---------------------------------------------------------------------------------------------


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
    """Same rules as :func:`r2m.data.read_jsonl`; extra fields are kept."""
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


def _trl(row: dict, ctx: AdapterContext) -> Optional[dict]:
    from r2m.dataset_trl import adapt  # imported here: r2m.dataset_trl builds on this module's helpers

    return adapt(row, ctx)


class FormatInfo(NamedTuple):
    adapter: Adapter
    kinds: frozenset[RowKind]
    """The plain schemas the format can give."""
    hub_split: str
    """Split read from a hub name when none is given."""
    expects: str
    """The schema, as error messages state it."""


_ALL = frozenset(RowKind)
FORMATS: dict[DatasetFormat, FormatInfo] = {
    DatasetFormat.PLAIN: FormatInfo(
        _plain, _ALL, "train",
        "non-empty strings 'prompt' (prompts), 'prompt'+'response' (sft) or 'prompt'+'chosen'+'rejected' (pairs)"),
    DatasetFormat.ULTRAFEEDBACK: FormatInfo(
        _ultrafeedback, _ALL, "train_prefs",
        "'chosen' and 'rejected' as lists of {'role', 'content'} messages ending with an assistant message"),
    DatasetFormat.HH_RLHF: FormatInfo(
        _hh_rlhf, _ALL, "train",
        "'chosen' and 'rejected' transcripts '\\n\\nHuman: ...\\n\\nAssistant: ...' sharing all but the last reply"),
    DatasetFormat.TLDR: FormatInfo(
        _tldr, frozenset({RowKind.PROMPT, RowKind.SFT}), "train", "'prompt' and 'completion' strings"),
    DatasetFormat.TLDR_PREFERENCE: FormatInfo(
        _tldr_preference, _ALL, "train",
        "'prompt', 'chosen', 'rejected' strings, or 'info' {post, title, subreddit}, "
        "'summaries' [{text}, {text}] and 'choice' 0/1"),
    DatasetFormat.STACK_EXCHANGE: FormatInfo(
        _stack_exchange, _ALL, "train", "'question', 'response_j' (preferred) and 'response_k' strings"),
    DatasetFormat.TRL: FormatInfo(
        _trl, _ALL, "train",
        "TRL's 'prompt' (prompt-only), 'prompt'+'completion', 'prompt'+'chosen'+'rejected' or 'chosen'+'rejected', "
        "as strings or as [{'role', 'content'}] message lists"),
}

ADAPTERS: dict[DatasetFormat, Adapter] = {fmt: info.adapter for fmt, info in FORMATS.items()}
"""One adapter per format: (source row, context) -> plain row, or None for a skipped row."""


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class LoadReport(NamedTuple):
    source: str
    fmt: DatasetFormat
    kind: RowKind
    read: int
    """Rows in the source."""
    kept: int
    """Rows returned."""
    dropped_long: int
    """Rows whose chosen response (or SFT response) is longer than max_response_tokens."""
    skipped: dict[str, int]
    """Reason -> rows skipped (empty_response, prefix_mismatch, identical_pair, duplicate_prompt, ...)."""

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"{self.source} ({self.fmt.value} -> {self.kind.value}): kept {self.kept} of {self.read} rows; "
                f"dropped {self.dropped_long} over max_response_tokens; skipped: {skipped}")


class Loaded(NamedTuple):
    rows: list[dict]
    report: LoadReport


_LOCAL_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def _as_format(fmt: Union[DatasetFormat, str]) -> DatasetFormat:
    try:
        return DatasetFormat(fmt)
    except ValueError:
        raise ConfigError(f"dataset format: expected one of {[f.value for f in DatasetFormat]}, got {fmt!r}") from None


class Source(NamedTuple):
    """How a dataset is opened besides its path and split."""

    config: Optional[str] = None
    """Subset (``load_dataset(name=...)``) of a hub dataset or a local directory with a dataset card."""
    streaming: bool = False
    """Read rows as they arrive (an ``IterableDataset``) instead of preparing the whole split first."""


def _load_dataset(source: str, split: Optional[str], fmt: DatasetFormat, how: Source = Source()) -> Iterable[dict]:
    """Rows of a local file or directory, or of a hub dataset, via ``datasets.load_dataset``."""
    from datasets import load_dataset

    path = Path(source)
    if path.suffix in _LOCAL_BUILDERS and not path.is_file():
        raise DataError(f"{source}: file not found")
    try:
        if path.is_file():
            builder = _LOCAL_BUILDERS.get(path.suffix)
            if builder is None:
                raise DataError(f"{source}: expected a .jsonl, .json or .parquet file")
            if builder == "json":  # Arrow fails on an undecodable byte only when a row is read, and unnamed
                from r2m.data import decode_lines

                decode_lines(path, path.read_bytes())
            # A local file is one split; naming it after ``split`` lets a caller's split name work too.
            name = split or "train"
            if how.config is not None:
                raise DataError(f"{source}: data.config={how.config!r} names a subset, but a single file has none")
            return load_dataset(builder, data_files={name: str(path)}, split=name, streaming=how.streaming)
        # A local directory is streamed: for a directory with a dataset card, datasets reuses the cache of *any*
        # earlier directory of the same name (<cache>/<name>/default/..., its legacy-cache check ignores the
        # files), so an edited or re-downloaded copy would be read stale. Streaming reads the files themselves.
        streaming = how.streaming or path.is_dir()
        return load_dataset(source, name=how.config, split=split or FORMATS[fmt].hub_split, streaming=streaming)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (builder, arrow, hub, offline); one clear line instead
        raise DataError(f"{source}: cannot load with datasets.load_dataset: {type(e).__name__}: {e}") from e


def _read(source: str, fmt: DatasetFormat, kind: RowKind, split: Optional[str],
          ctx: AdapterContext, how: Source = Source()) -> tuple[list[dict], int]:
    """Adapted rows and the number of source rows read."""
    if fmt == DatasetFormat.PLAIN and Path(source).suffix == ".jsonl":
        # The plain JSONL reader gives line numbers and reports malformed JSON, which Arrow cannot.
        rows = read_jsonl(source, KIND_FIELDS[kind])
        return rows, len(rows)
    adapter, rows, n = ADAPTERS[fmt], [], 0
    for n, row in enumerate(_load_dataset(source, split, fmt, how), start=1):
        ctx.index = n
        out = adapter(row, ctx)
        if out is not None:
            rows.append(out)
    return rows, n


def _response(row: dict) -> Optional[str]:
    return row.get("chosen", row.get("response"))


def _long_rows(rows: Sequence[dict], tokenizer: "PreTrainedTokenizerBase", max_tokens: int,
               batch_size: int = 1024) -> list[bool]:
    """Whether each row's chosen/SFT response exceeds ``max_tokens`` (tokenised without specials, as r2m does)."""
    texts = [_response(r) or "" for r in rows]
    flags: list[bool] = []
    for i in range(0, len(texts), batch_size):
        ids = tokenizer(texts[i: i + batch_size], add_special_tokens=False)["input_ids"]
        flags.extend(len(x) > max_tokens for x in ids)
    return flags


def _project(row: dict, kind: RowKind) -> dict:
    """The plain schema of ``kind`` from an adapter's row."""
    if kind == RowKind.PREFERENCE:
        return {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}
    if kind == RowKind.SFT:
        return {"prompt": row["prompt"], "response": row["response"] if "response" in row else row["chosen"]}
    return {"prompt": row["prompt"]}


def _finish(rows: list[dict], fmt: DatasetFormat, kind: RowKind, ctx: AdapterContext) -> list[dict]:
    """Project adapted rows onto ``kind``; pairs must differ and derived prompt sets hold each prompt once."""
    if fmt == DatasetFormat.PLAIN:
        return rows  # validated as-is, extra fields kept (as r2m.data does)
    out, seen = [], set()
    for row in rows:
        if kind == RowKind.PREFERENCE and row["chosen"] == row["rejected"]:
            ctx.skip("identical_pair")
            continue
        if kind == RowKind.PROMPT:
            # Pair datasets repeat a prompt once per pair (up to 10 in stack-exchange-paired); RL
            # should sample prompts uniformly, not by how many pairs they got.
            if row["prompt"] in seen:
                ctx.skip("duplicate_prompt")
                continue
            seen.add(row["prompt"])
        out.append(_project(row, kind))
    return out


def load_rows(source: Union[str, Path], fmt: Union[DatasetFormat, str], kind: RowKind, split: Optional[str] = None,
              tokenizer: Optional["PreTrainedTokenizerBase"] = None, max_response_tokens: Optional[int] = None,
              on_mismatch: OnMismatch = OnMismatch.SKIP, how: Source = Source()) -> Loaded:
    """Plain rows of ``kind`` from ``source`` read as ``fmt``, and what was dropped on the way.

    ``how`` names a subset (``data.config``) and whether to stream (``data.streaming``).

    ``max_response_tokens`` (needs ``tokenizer``) drops rows whose chosen response (SFT: the
    response) has more tokens; for prompts the source row's chosen response is measured, so that the
    prompt set matches the filtered pairs (R2M: UltraFeedback chosen responses <= 512 tokens).
    """
    source, fmt = str(source), _as_format(fmt)
    if kind not in FORMATS[fmt].kinds:
        raise DataError(f"{source}: format '{fmt.value}' gives {sorted(k.value for k in FORMATS[fmt].kinds)} rows, "
                        f"not {kind.value} rows (for TL;DR pairs use '{DatasetFormat.TLDR_PREFERENCE.value}')")
    if max_response_tokens is not None and (tokenizer is None or max_response_tokens < 1):
        raise ConfigError(f"max_response_tokens: expected >= 1 and a tokenizer to count with, got "
                          f"{max_response_tokens!r} and {'a' if tokenizer is not None else 'no'} tokenizer")
    ctx = AdapterContext(source, fmt, kind, tokenizer, on_mismatch)
    rows, read = _read(source, fmt, kind, split, ctx, how)
    dropped = 0
    if max_response_tokens is not None and rows:
        long = _long_rows(rows, tokenizer, max_response_tokens)
        dropped = sum(long)
        rows = [r for r, too_long in zip(rows, long) if not too_long]
    rows = _finish(rows, fmt, kind, ctx)
    report = LoadReport(source, fmt, kind, read, len(rows), dropped, dict(ctx.skipped))
    if not rows:
        raise DataError(f"{source}: no rows left: {report.summary()}")
    log.info("data: %s", report.summary())
    return Loaded(rows, report)


def load_prompts(source: Union[str, Path], fmt: Union[DatasetFormat, str] = DatasetFormat.PLAIN,
                 split: Optional[str] = None, tokenizer: Optional["PreTrainedTokenizerBase"] = None,
                 max_response_tokens: Optional[int] = None, on_mismatch: OnMismatch = OnMismatch.SKIP,
                 how: Source = Source()) -> list[dict]:
    """``{"prompt"}`` rows (each prompt once, for formats other than PLAIN)."""
    return load_rows(source, fmt, RowKind.PROMPT, split, tokenizer, max_response_tokens, on_mismatch, how).rows


def load_sft(source: Union[str, Path], fmt: Union[DatasetFormat, str] = DatasetFormat.PLAIN,
             split: Optional[str] = None, tokenizer: Optional["PreTrainedTokenizerBase"] = None,
             max_response_tokens: Optional[int] = None, on_mismatch: OnMismatch = OnMismatch.SKIP,
             how: Source = Source()) -> list[dict]:
    """``{"prompt", "response"}`` rows; pair formats give their chosen response."""
    return load_rows(source, fmt, RowKind.SFT, split, tokenizer, max_response_tokens, on_mismatch, how).rows


def load_preferences(source: Union[str, Path], fmt: Union[DatasetFormat, str] = DatasetFormat.PLAIN,
                     split: Optional[str] = None, tokenizer: Optional["PreTrainedTokenizerBase"] = None,
                     max_response_tokens: Optional[int] = None,
                     on_mismatch: OnMismatch = OnMismatch.SKIP, how: Source = Source()) -> list[dict]:
    """``{"prompt", "chosen", "rejected"}`` rows."""
    return load_rows(source, fmt, RowKind.PREFERENCE, split, tokenizer, max_response_tokens, on_mismatch, how).rows
