"""Pluggable judges for win rates: the world's gold reward, a reward model, or an LLM behind an API.

A :class:`Judge` compares two responses to the same prompt: 1 = a is better, 0 = b is better,
0.5 = tie, NaN = no usable verdict. A :class:`Scorer` rates single responses.

:class:`ApiJudge` talks to any OpenAI-compatible ``/chat/completions`` endpoint through the ``openai`` client (the
``r2m[openai]`` extra), with r2m's own retries, backoff, bounded concurrency, reply cache and named errors on top
(the client's own retries are off). Pairwise, it asks in both orders and calls inconsistent verdicts a tie (SER paper,
Appendix C.2); single-answer, it uses SER's additive 5-point rubric (Appendix D.4). The API key is
read from an environment variable or a key file only, and never reaches logs, caches or errors.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import os
import random
import re
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

from r2m.config.jobs import JudgeConfig
from r2m.config.enums import JudgeMode
from r2m.config.run import WorldConfig
from r2m.errors import ConfigError, R2MError
from r2m.eval import judge_prompts
from r2m.eval.winrate import LOSS, TIE, WIN, outcomes_from_scores
from r2m.world.task import gold_rewards

if TYPE_CHECKING:
    from r2m.models.reward import RewardModel

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
"""A chat conversation: ``[{"role": ..., "content": ...}, ...]``."""


# ---------------------------------------------------------------------------------------------
# Protocols and the local judges
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class Judge(Protocol):
    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        """(N,) outcomes: 1 = a better, 0 = b better, 0.5 = tie, NaN = no verdict."""
        ...


@runtime_checkable
class Scorer(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """(N,) scores, higher is better; NaN = no score."""
        ...


def _check_lengths(prompts: Sequence[str], *responses: Sequence[str]) -> None:
    for r in responses:
        if len(r) != len(prompts):
            raise ValueError(f"judge: expected as many responses as prompts, got {len(r)} for {len(prompts)} prompts")


class GoldJudge:
    """The gold-reward world's true reward (world prompts only); compares by gold."""

    def __init__(self, world: WorldConfig):
        self.world = world

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return gold_rewards(list(prompts), list(responses), self.world)

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        return outcomes_from_scores(self.score(prompts, responses_a), self.score(prompts, responses_b))


class RewardModelJudge:
    """A sequence-classification reward model (:class:`r2m.models.reward.RewardModel`); compares by score."""

    def __init__(self, reward_model: "RewardModel", batch_size: int = 256):
        self.rm = reward_model.eval().requires_grad_(False)
        self.batch_size = batch_size

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self.rm.score_texts(list(prompts), list(responses), self.batch_size).tolist()

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b)
        return outcomes_from_scores(self.score(prompts, responses_a), self.score(prompts, responses_b))


# ---------------------------------------------------------------------------------------------
# API judge: configuration, verdict parsing
# ---------------------------------------------------------------------------------------------


class Verdict(str, enum.Enum):
    """One pairwise reply, in the positions the judge saw."""

    A = "A"
    B = "B"
    TIE = "tie"
    INVALID = "invalid"
    """No ``[[A]]``/``[[B]]``/``[[C]]`` in the reply."""


JUDGE_ENV: dict[str, str] = {
    "base_url": "R2M_JUDGE_BASE_URL", "model": "R2M_JUDGE_MODEL", "api_key_env": "R2M_JUDGE_KEY_ENV",
    "api_key_file": "R2M_JUDGE_KEY_FILE", "mode": "R2M_JUDGE_MODE", "concurrency": "R2M_JUDGE_CONCURRENCY",
    "max_retries": "R2M_JUDGE_MAX_RETRIES", "timeout": "R2M_JUDGE_TIMEOUT", "cache_dir": "R2M_JUDGE_CACHE",
}
"""Each nullable ``eval.judge`` field -> the environment variable read when it is null."""
JUDGE_DEFAULTS: dict[str, object] = {
    "base_url": "https://api.openai.com/v1", "model": "gpt-4o-2024-08-06", "api_key_env": "OPENAI_API_KEY",
    "api_key_file": None, "mode": JudgeMode.PAIRWISE, "concurrency": 4, "max_retries": 5, "timeout": 60.0,
    "cache_dir": ".r2m_judge_cache",
}
"""The value of a field that is null in the config and unset in the environment."""
DEFAULT_CACHE_DIR = JUDGE_DEFAULTS["cache_dir"]
_ENV_KINDS = {"concurrency": int, "max_retries": int, "timeout": float, "mode": JudgeMode}


def _from_env(var: str, value: str, kind: type) -> object:
    if kind is str:
        return value
    try:
        return kind(value)
    except ValueError:
        expected = {int: "an integer", float: "a number"}.get(kind) or f"one of {', '.join(m.value for m in kind)}"
        raise ConfigError(f"{var}: expected {expected}, got {value!r}") from None


def resolve_judge(judge: Optional[JudgeConfig] = None, environ: Optional[Mapping[str, str]] = None) -> JudgeConfig:
    """``judge`` with every null field filled: from its ``R2M_JUDGE_*`` environment variable (:data:`JUDGE_ENV`)
    when set, else its default (:data:`JUDGE_DEFAULTS`; ``api_key_file`` stays None). ``cache_dir`` "" (in the
    config or ``R2M_JUDGE_CACHE=""``) is no cache. Reads no key."""
    judge = judge or JudgeConfig()
    environ = os.environ if environ is None else environ
    filled = {}
    for name, var in JUDGE_ENV.items():
        value = getattr(judge, name)
        if value is None and var in environ and (environ[var] != "" or name == "cache_dir"):
            value = _from_env(var, environ[var], _ENV_KINDS.get(name, str))
        filled[name] = JUDGE_DEFAULTS[name] if value is None else value
    return replace(judge, **filled)


class JudgeError(R2MError):
    """The judge endpoint failed or replied in an unexpected form. Names the endpoint, never the key."""


class PairwiseJudgment(NamedTuple):
    first: Verdict
    """Verdict with a shown as A and b as B."""
    second: Verdict
    """Verdict with b shown as A and a as B (positions as the judge saw them)."""
    outcome: float
    """1 = a better, 0 = b better, 0.5 = tie (including inconsistent verdicts), NaN = a verdict missing."""


_VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_SCORE_RE = re.compile(r"score\s*\**\s*:\s*\**\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_verdict(text: str) -> Verdict:
    """The last ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie) in the reply: the final verdict follows the explanation."""
    found = _VERDICT_RE.findall(text or "")
    if not found:
        return Verdict.INVALID
    return {"A": Verdict.A, "B": Verdict.B, "C": Verdict.TIE}[found[-1]]


def parse_score(text: str) -> float:
    """The number after the first ``Score:`` (any case; markdown ``**`` allowed around it), if in [0, 5].

    The rubric asks for the score first, so the first match is the answer; anything else (no match,
    the literal ``<total score>``, a number outside the rubric's 0..5) is NaN.
    """
    m = _SCORE_RE.search(text or "")
    if m is None:
        return float("nan")
    value = float(m.group(1))
    return value if 0 <= value <= judge_prompts.RUBRIC_MAX_SCORE else float("nan")


def _preference(verdict: Verdict, a_shown_first: bool) -> float:
    """A verdict as P(a better): 1, 0.5 or 0 (NaN when invalid)."""
    if verdict == Verdict.INVALID:
        return float("nan")
    if verdict == Verdict.TIE:
        return TIE
    a_won = (verdict == Verdict.A) == a_shown_first
    return WIN if a_won else LOSS


def combine_verdicts(first: Verdict, second: Verdict) -> float:
    """Outcome of the two orders: their common preference, or a tie when they disagree (SER App. C.2)."""
    p1, p2 = _preference(first, True), _preference(second, False)
    if math.isnan(p1) or math.isnan(p2):
        return float("nan")
    return p1 if p1 == p2 else TIE


def pairwise_messages(question: str, answer_a: str, answer_b: str) -> Messages:
    return [
        {"role": "system", "content": judge_prompts.PAIRWISE_SYSTEM},
        {"role": "user", "content": judge_prompts.PAIRWISE_USER.format(question=question, answer_a=answer_a,
                                                                        answer_b=answer_b)},
    ]


def rubric_messages(question: str, answer: str) -> Messages:
    return [
        {"role": "system", "content": judge_prompts.RUBRIC_SYSTEM},
        {"role": "user", "content": judge_prompts.RUBRIC_USER.format(question=question, answer=answer)},
    ]


# ---------------------------------------------------------------------------------------------
# API judge: the HTTP client (retries, cache, bounded concurrency)
# ---------------------------------------------------------------------------------------------


def read_api_key(cfg: JudgeConfig) -> str:
    """The key from ``api_key_file`` if set, else from ``$api_key_env``; errors name the source, not the key."""
    if cfg.api_key_file:
        path = Path(cfg.api_key_file).expanduser()
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"judge.api_key_file: cannot read {path} ({e.strerror})") from None
        if not key:
            raise ConfigError(f"judge.api_key_file: {path} is empty")
        return key
    key = os.environ.get(cfg.api_key_env, "").strip()
    if not key:
        raise ConfigError(f"judge.api_key_env: environment variable {cfg.api_key_env} is not set "
                          f"(set it, or judge.api_key_file; a local server without auth accepts any value)")
    return key


@dataclass
class ApiJudgeStats:
    """Counters of one client's lifetime (for logs and tests)."""

    http_requests: int = 0
    """HTTP attempts sent (retries included)."""
    cache_hits: int = 0
    """Conversations answered from the disk cache."""
    retries: int = 0
    """Attempts that failed with a retryable error and were retried."""
    unparseable: int = 0
    """Replies with no verdict or no score."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(headers) -> Optional[float]:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def _openai_client(cfg: JudgeConfig, key: str):
    """The ``openai.OpenAI`` client of ``cfg``, its own retries off; a clear error where the extra is missing."""
    try:
        import openai
    except ImportError:
        raise ConfigError("eval.judge: the API judge talks to its endpoint through the openai client, which is not "
                          "installed: pip install 'r2m[openai]'") from None
    # "User-Agent": some gateways refuse a library's default agent.
    return openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout, max_retries=0,
                         default_headers={"User-Agent": "r2m-judge/0.1"})


class ChatClient:
    """Chat completions (the ``openai`` client) with r2m's retries, a disk cache and a bounded thread pool."""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg = resolve_judge(cfg)
        self._key = read_api_key(cfg)
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.stats = ApiJudgeStats()
        self._lock = threading.Lock()
        self._client = _openai_client(cfg, self._key)

    def __repr__(self) -> str:  # the default repr would be harmless, but be explicit: no key
        return f"ChatClient(url={self.url!r}, model={self.cfg.model!r})"

    def record(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` of :attr:`stats` (thread-safe)."""
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def _redact(self, text: str) -> str:
        """Servers may echo request headers in error bodies: never pass the key on."""
        return text.replace(self._key, "***") if self._key else text

    # ---- cache ----

    def cache_key(self, messages: Messages) -> str:
        req = {"base_url": self.url, "model": self.cfg.model, "messages": messages,
               "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        return hashlib.sha256(json.dumps(req, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Optional[Path]:
        return Path(self.cfg.cache_dir) / key[:2] / f"{key}.json" if self.cfg.cache_dir else None

    def _cache_get(self, key: str) -> Optional[str]:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["content"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("judge cache: ignoring unreadable entry %s", path)
            return None

    def _cache_put(self, key: str, messages: Messages, content: str) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"base_url": self.url, "model": self.cfg.model, "temperature": self.cfg.temperature,
                 "max_tokens": self.cfg.max_tokens, "messages": messages, "content": content}
        # Unique temp name per thread and process, then an atomic rename: concurrent writers never clash.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entry, f, ensure_ascii=False)
        os.replace(tmp, path)

    # ---- HTTP ----

    def _status_error(self, e) -> Exception:
        """An ``openai.APIStatusError`` as r2m's: 429 and 5xx are retried (after the server's Retry-After, if any)."""
        detail = self._redact(getattr(e.response, "text", "")[:300]).strip()
        code = e.status_code
        if code == 429 or code >= 500:
            return _Retryable(f"HTTP {code} {detail}", _retry_after(e.response.headers))
        reason = getattr(e.response, "reason_phrase", "") or type(e).__name__
        return JudgeError(f"judge endpoint {self.url}: HTTP {code} {reason}: {detail}")

    def _post_once(self, body: dict):
        """One request through the openai client (its own retries off: r2m retries, counts and logs them)."""
        import openai

        self.record("http_requests")
        try:
            return self._client.chat.completions.create(**body)
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            cause = e.__cause__ or e
            raise _Retryable(f"{type(e).__name__}: {self._redact(str(cause))}") from None

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        delay = self.cfg.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.cfg.max_backoff_s)

    def _post(self, body: dict):
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._post_once(body)
            except _Retryable as e:
                last = str(e)
                if attempt + 1 == attempts:
                    break
                delay = self._delay(attempt, e.retry_after)
                log.warning("judge endpoint %s: %s; retry %d/%d in %.2fs", self.url, last, attempt + 1,
                            self.cfg.max_retries, delay)
                self.record("retries")
                time.sleep(delay)
        raise JudgeError(f"judge endpoint {self.url}: gave up after {attempts} attempts; last error: {last}")

    def complete(self, messages: Messages) -> str:
        """The reply text to one conversation (from the cache when present)."""
        key = self.cache_key(messages)
        cached = self._cache_get(key)
        if cached is not None:
            self.record("cache_hits")
            return cached
        return self._fetch(key, messages)

    def _fetch(self, key: str, messages: Messages) -> str:
        body = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens}
        reply = self._post(body)
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            snippet = self._redact(repr(reply)[:200])
            raise JudgeError(f"judge endpoint {self.url}: unexpected reply (expected choices[0].message.content): "
                             f"{snippet}") from None
        content = content or ""  # a refusal may come back as null content: unparseable, not a crash
        self._cache_put(key, messages, content)
        return content

    def complete_many(self, conversations: Sequence[Messages]) -> list[str]:
        """Replies in order. Cached and duplicate conversations cost no request; the rest run
        at most ``concurrency`` at a time."""
        keys = [self.cache_key(m) for m in conversations]
        replies: dict[str, str] = {}
        todo: dict[str, Messages] = {}
        for key, messages in zip(keys, conversations):
            if key in replies or key in todo:
                continue
            cached = self._cache_get(key)
            if cached is not None:
                replies[key] = cached
                self.record("cache_hits")
            else:
                todo[key] = messages
        log.info("judge %s: %d conversations, %d cached, %d to send", self.cfg.model, len(keys), len(replies),
                 len(todo))
        if todo:
            replies.update(self._fetch_all(todo))
        return [replies[k] for k in keys]

    def _fetch_all(self, todo: dict[str, Messages]) -> dict[str, str]:
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(todo)),
                                  thread_name_prefix="r2m-judge")
        try:
            futures: dict[str, Future] = {k: pool.submit(self._fetch, k, m) for k, m in todo.items()}
            return {k: f.result() for k, f in futures.items()}
        finally:
            # On a failure, drop the queued requests instead of sending them (and waiting on their retries).
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# API judge
# ---------------------------------------------------------------------------------------------


class ApiJudge:
    """An LLM judge behind an OpenAI-compatible endpoint: pairwise (both orders) or SER's rubric."""

    def __init__(self, cfg: JudgeConfig, client: Optional[ChatClient] = None):
        self.cfg = resolve_judge(cfg)
        self.client = client or ChatClient(self.cfg)

    def __repr__(self) -> str:
        return f"ApiJudge(url={self.client.url!r}, model={self.cfg.model!r}, mode={self.cfg.mode.value})"

    @property
    def stats(self) -> ApiJudgeStats:
        return self.client.stats

    def compare_detailed(self, prompts: Sequence[str], responses_a: Sequence[str],
                         responses_b: Sequence[str]) -> list[PairwiseJudgment]:
        """Both orders of every pair (2N conversations, all sent through one bounded pool)."""
        _check_lengths(prompts, responses_a, responses_b)
        n = len(prompts)
        convs = [pairwise_messages(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
        convs += [pairwise_messages(p, b, a) for p, a, b in zip(prompts, responses_a, responses_b)]
        verdicts = [parse_verdict(r) for r in self.client.complete_many(convs)]  # (2N,)
        out = [PairwiseJudgment(v1, v2, combine_verdicts(v1, v2)) for v1, v2 in zip(verdicts[:n], verdicts[n:])]
        self._note_unparseable(sum(v == Verdict.INVALID for v in verdicts), "pairwise verdicts")
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """SER's additive 5-point rubric (0..5; NaN where no ``Score: N`` is found, see :func:`parse_score`)."""
        _check_lengths(prompts, responses)
        replies = self.client.complete_many([rubric_messages(p, r) for p, r in zip(prompts, responses)])
        scores = [parse_score(r) for r in replies]
        self._note_unparseable(sum(math.isnan(s) for s in scores), "rubric scores")
        return scores

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]:
        if self.cfg.mode == JudgeMode.SINGLE:
            _check_lengths(prompts, responses_a, responses_b)
            n = len(prompts)
            # One call for both sides, so that all 2N requests share the bounded pool.
            scores = self.score(list(prompts) * 2, list(responses_a) + list(responses_b))  # (2N,)
            return outcomes_from_scores(scores[:n], scores[n:])
        return [j.outcome for j in self.compare_detailed(prompts, responses_a, responses_b)]

    def _note_unparseable(self, count: int, what: str) -> None:
        if count:
            self.client.record("unparseable", count)
            log.warning("judge %s: %d unparseable %s (counted as no verdict)", self.cfg.model, count, what)


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


class JudgeKind(str, enum.Enum):
    """Which judge a win rate uses."""

    GOLD = "gold"
    """The world's gold reward (world prompts only)."""
    REWARD_MODEL = "reward_model"
    """A reward model's scores."""
    API = "api"
    """An LLM behind an OpenAI-compatible endpoint."""


def build_judge(kind: JudgeKind, world: Optional[WorldConfig] = None, reward_model: Optional["RewardModel"] = None,
                api: Optional[JudgeConfig] = None) -> Judge:
    """The judge of ``kind``; it needs ``world``, ``reward_model`` or ``api`` respectively."""
    if kind == JudgeKind.GOLD:
        return GoldJudge(world or WorldConfig())
    if kind == JudgeKind.REWARD_MODEL:
        if reward_model is None:
            raise ConfigError("judge: kind reward_model needs a reward model")
        return RewardModelJudge(reward_model)
    return ApiJudge(api or JudgeConfig())
