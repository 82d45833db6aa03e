"""Adapters from public RLHF datasets to r2m's plain rows (see docs/DATA.md).

Every loader returns the schemas of :mod:`r2m.data.jsonl`:

- prompts:     {"prompt": str}
- sft:         {"prompt": str, "response": str}
- preferences: {"prompt": str, "chosen": str, "rejected": str}

The prompt is the rendered text the policy continues; responses are plain text. Prompt and
response are tokenised separately downstream (see :meth:`r2m.models.reward.RewardModel.tokenize`),
so a split keeps ``prompt + response`` equal to the original text (HH-RLHF and TL;DR responses keep
their leading space).

Sources are local ``.jsonl``/``.json``/``.parquet`` files, local directories (a hub dataset's layout:
``data/<split>-*.parquet`` and a card with a ``configs`` block), hub dataset names, all read through
``datasets.load_dataset`` (never with ``trust_remote_code``), or a Python dataset the object API was given
(:mod:`r2m.data.sources`). A source left at format ``plain`` whose columns are TRL's (or UltraFeedback's) is read
in that format (:func:`r2m.data.trl_formats.detect_format`), and said so in the log. A row that does not
match its format's schema raises :class:`DataError` naming the source, the row (1-based) and the
field; rows that match the schema but cannot be used (an empty response, chosen and rejected that do
not share a prompt) are skipped and counted in a :class:`LoadReport`.

``datasets`` and ``transformers`` are imported inside the functions, so that importing the readers stays cheap.
The row adapters are in :mod:`r2m.data.adapters` and :mod:`r2m.data.trl_formats`.
"""

from __future__ import annotations

import logging
from pathlib import Path
import itertools
import json
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

from r2m.config.paths import DatasetFormat
from r2m.data.adapters import (KIND_FIELDS, Adapter, AdapterContext, RowKind, _hh_rlhf, _plain, _stack_exchange, _tldr,
                               _tldr_preference, _ultrafeedback, format_hint)
from r2m.config.enums import OnMismatch
from r2m.data.jsonl import read_jsonl
from r2m.data.sources import display_name, python_source
from r2m.data.trl_formats import adapt as _trl, detect_format
from r2m.errors import ConfigError, DataError
from r2m.fileio import decode_lines

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("r2m")


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
        "as strings or as [{'role', 'content'}] message lists, or 'messages'"),
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
    """Rows of a Python dataset, a local file or directory, or a hub dataset (``datasets.load_dataset``)."""
    python = python_source(source)
    if python is not None:
        return python.dataset  # a Dataset or IterableDataset iterates as dict rows
    from datasets import load_dataset

    path = Path(source)
    if path.suffix in _LOCAL_BUILDERS and not path.is_file():
        raise DataError(f"{source}: file not found")
    try:
        if path.is_file():
            builder = _LOCAL_BUILDERS.get(path.suffix)
            if builder is None:
                raise DataError(f"{source}: expected a .jsonl, .json or .parquet file, or a dataset directory")
            if builder == "json":  # Arrow fails on an undecodable byte only when a row is read, and unnamed
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
        hint = " (set the split: data.train_split, data.eval_split or data.splits.<field>)" if "split" in str(e) else ""
        raise DataError(f"{source}: cannot load with datasets.load_dataset: {type(e).__name__}: {e}{hint}") from e


def _first_jsonl_row(path: Path) -> Optional[dict]:
    """The first row of a JSONL file (None: missing, empty or malformed; the plain reader then says which)."""
    if not path.is_file():
        return None
    for line in decode_lines(path, path.read_bytes()):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return None
            return row if isinstance(row, dict) else None
    return None


def _detected(ctx: AdapterContext, first: Optional[dict]) -> DatasetFormat:
    """The format of a ``plain`` source from its first row; ``ctx`` then reads (and errors speak) in it."""
    fmt = detect_format(first) if first is not None else DatasetFormat.PLAIN
    if fmt != DatasetFormat.PLAIN:
        log.info("data: %s: columns %s are %s's format: read as data.format=%s", ctx.source, sorted(first),
                 "TRL" if fmt == DatasetFormat.TRL else fmt.value, fmt.value)
        ctx.fmt, ctx.expects, ctx.detected = fmt, FORMATS[fmt].expects, True
    return fmt


def _rows(source: str, fmt: DatasetFormat, split: Optional[str], ctx: AdapterContext,
          how: Source) -> Iterator[dict]:
    """The source's rows; with ``plain`` its format is detected from the first row first (``ctx.fmt``)."""
    rows = iter(_load_dataset(source, split, fmt, how))
    if fmt != DatasetFormat.PLAIN:
        return rows
    first = next(rows, None)
    _detected(ctx, first)
    return itertools.chain([first] if first is not None else [], rows)


def _read(source: str, fmt: DatasetFormat, kind: RowKind, split: Optional[str],
          ctx: AdapterContext, how: Source = Source()) -> tuple[list[dict], int]:
    """Adapted rows and the number of source rows read (``ctx.fmt``: the format read, detected for ``plain``)."""
    if fmt == DatasetFormat.PLAIN and Path(source).suffix == ".jsonl" and python_source(source) is None \
            and _detected(ctx, _first_jsonl_row(Path(source))) == DatasetFormat.PLAIN:
        # The plain JSONL reader gives line numbers and reports malformed JSON, which Arrow cannot.
        rows = read_jsonl(source, KIND_FIELDS[kind], hint=f"format 'plain' expects {ctx.expects}; {format_hint()}")
        return rows, len(rows)
    rows, n = [], 0
    for n, row in enumerate(_rows(source, ctx.fmt, split, ctx, how), start=1):
        ctx.index = n
        out = ADAPTERS[ctx.fmt](row, ctx)
        if out is not None:
            rows.append(out)
    return rows, n


def stream_prompts(source: Union[str, Path], fmt: Union[DatasetFormat, str] = DatasetFormat.PLAIN,
                   split: Optional[str] = None, tokenizer: Optional["PreTrainedTokenizerBase"] = None,
                   how: Source = Source(), epoch: int = 0) -> Iterator[str]:
    """The prompts of one pass (``epoch``) over a source read as a stream, as they arrive: nothing is held but the
    current row. An ``IterableDataset`` is told the epoch (``set_epoch``), so that one shuffled with a buffer
    reshuffles on each pass. Prompts a source repeats (a pair dataset's) are not deduplicated here."""
    source, fmt = str(source), _as_format(fmt)
    ctx = AdapterContext(display_name(source), fmt, RowKind.PROMPT, FORMATS[fmt].expects, tokenizer)
    dataset = _load_dataset(source, split, fmt, how)
    if callable(getattr(dataset, "set_epoch", None)):
        dataset.set_epoch(epoch)
    rows = iter(dataset)
    first = next(rows, None)
    if fmt == DatasetFormat.PLAIN:
        _detected(ctx, first)
    for n, row in enumerate(itertools.chain([first] if first is not None else [], rows), start=1):
        ctx.index = n
        out = ADAPTERS[ctx.fmt](row, ctx)
        if out is not None:
            yield out["prompt"]


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
        return rows  # validated as-is, extra fields kept (as r2m.data.jsonl does)
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
    ctx = AdapterContext(display_name(source), fmt, kind, FORMATS[fmt].expects, tokenizer, on_mismatch)
    rows, read = _read(source, fmt, kind, split, ctx, how)
    fmt = ctx.fmt  # detected from the columns when the source was left at plain
    dropped = 0
    if max_response_tokens is not None and rows:
        long = _long_rows(rows, tokenizer, max_response_tokens)
        dropped = sum(long)
        rows = [r for r, too_long in zip(rows, long) if not too_long]
    rows = _finish(rows, fmt, kind, ctx)
    report = LoadReport(ctx.source, fmt, kind, read, len(rows), dropped, dict(ctx.skipped))
    if not rows:
        raise DataError(f"{ctx.source}: no rows left: {report.summary()}")
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
