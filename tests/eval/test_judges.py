"""Judges: gold and reward-model judges, and the API judge against a fake OpenAI-compatible server."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, Optional

import pytest
import torch

from r2m.config.enums import JudgeMode
from r2m.config.jobs import JudgeConfig
from r2m.config.run import WorldConfig
from r2m.config.parsing import load_config, save_config
from r2m.errors import ConfigError
from r2m.eval import judge_prompts
from r2m.eval.judges import (
    ApiJudge,
    ChatClient,
    GoldJudge,
    Judge,
    JudgeError,
    JudgeKind,
    RewardModelJudge,
    Scorer,
    Verdict,
    resolve_judge,
    build_judge,
    combine_verdicts,
    pairwise_messages,
    parse_score,
    parse_verdict,
)

KEY = "sk-test-DO-NOT-LEAK-4f9a1c"
MARKER = "GOOD"

# ---------------------------------------------------------------------------------------------
# A fake OpenAI-compatible server
# ---------------------------------------------------------------------------------------------


def marker_judge(messages: list[dict]) -> str:
    """A consistent judge: prefers the answer containing MARKER, whatever its position."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if system == judge_prompts.RUBRIC_SYSTEM:
        if "GARBLE" in user:
            return "I would rather not rate this."
        return f"Score: {4 if MARKER in user else 1}\n\nEvaluation evidence: because."
    part_a, part_b = user.split("[The Start of Assistant B's Answer]")
    if MARKER in part_a and MARKER not in part_b:
        return "A mentions the thing. [[A]]"
    if MARKER in part_b and MARKER not in part_a:
        return "Assistant B is better. [[B]]"
    return "They are alike. [[C]]"


def position_biased_judge(messages: list[dict]) -> str:
    """Always prefers the first answer shown, and even mentions [[B]] before its final verdict."""
    return "Unlike [[B]], the first one is better.\nFinal verdict: [[A]]"


class FakeServer:
    """``POST /v1/chat/completions`` on 127.0.0.1 with scripted failures, delays and concurrency counting."""

    def __init__(self, reply: Callable[[list[dict]], str] = marker_judge):
        self.reply = reply
        self.failures: list[int] = []  # status codes to answer with first, in order
        self.delays: list[float] = []  # per-request delays first, in order; then `delay`
        self.delay = 0.0
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: set[str] = set()
        self.paths: set[str] = set()
        self.models: set[str] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth.add(self.headers.get("Authorization", ""))
                    server.paths.add(self.path)
                    server.models.add(body.get("model", ""))
                    failure = server.failures.pop(0) if server.failures else None
                    delay = server.delays.pop(0) if server.delays else server.delay
                counted = True
                try:
                    time.sleep(delay)
                    # Leave the in-flight count before replying: once the reply is written the client may send
                    # its next request, and counting this one until after the write would see one too many.
                    with server.lock:
                        server.in_flight -= 1
                    counted = False
                    if failure is not None:
                        # Echo the request's auth header: the client must redact it from its errors.
                        self._send(failure, {"error": f"boom; you sent {self.headers.get('Authorization')}"},
                                   {"Retry-After": "0"} if failure == 429 else {})
                    else:
                        content = server.reply(body["messages"])
                        message = {"role": "assistant", "content": content}
                        self._send(200, {"choices": [{"index": 0, "message": message}]})
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass
                finally:
                    if counted:
                        with server.lock:
                            server.in_flight -= 1

            def _send(self, code: int, payload: dict, headers: Optional[dict] = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def _env(monkeypatch) -> None:
    """The key in the environment, and no proxy between the client and 127.0.0.1."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("R2M_TEST_JUDGE_KEY", KEY)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    pytest.importorskip("openai", reason="the API judge's client is the r2m[openai] extra")
    s = FakeServer()
    yield s
    s.close()


def _cfg(server: FakeServer, **changes) -> JudgeConfig:
    base = dict(base_url=server.base_url, model="fake-judge", api_key_env="R2M_TEST_JUDGE_KEY", backoff_s=0.01,
                max_backoff_s=0.05, timeout=5.0, concurrency=4, max_retries=3, cache_dir="")
    base.update(changes)
    return JudgeConfig(**base)


def neutral_messages(tag: str = "") -> list[dict]:
    """A pairwise conversation with no marker on either side (the fake answers [[C]])."""
    return pairwise_messages(f"question {tag}", "left", "right")


PROMPTS = ["q1", "q2", "q3", "q4"]
A = [f"{MARKER} one", "plain", "plain", f"{MARKER} four"]
B = ["plain", f"{MARKER} two", "also plain", f"{MARKER} again"]

# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def test_parse_verdict_takes_the_last_one() -> None:
    assert parse_verdict("[[A]]") == Verdict.A
    assert parse_verdict("not [[A]] but rather [[ B ]]") == Verdict.B
    assert parse_verdict("a tie: [[C]]") == Verdict.TIE
    assert parse_verdict("A is better") == Verdict.INVALID
    assert parse_verdict("") == Verdict.INVALID


def test_combine_verdicts_ser_rule() -> None:
    # second order shows b as A: "B" there means a is better.
    assert combine_verdicts(Verdict.A, Verdict.B) == 1.0
    assert combine_verdicts(Verdict.B, Verdict.A) == 0.0
    assert combine_verdicts(Verdict.A, Verdict.A) == 0.5  # position bias: inconsistent -> tie
    assert combine_verdicts(Verdict.A, Verdict.TIE) == 0.5
    assert combine_verdicts(Verdict.TIE, Verdict.TIE) == 0.5
    assert math.isnan(combine_verdicts(Verdict.INVALID, Verdict.B))


def test_parse_score_rule() -> None:
    assert parse_score("Score: 4\n\nEvaluation evidence: ok") == 4.0
    assert parse_score("**Score:** 3/5") == 3.0
    assert parse_score("score: 2.5") == 2.5
    assert parse_score("Score: 1\nlater Score: 5") == 1.0  # the first one counts
    assert math.isnan(parse_score("Score: <total score>"))
    assert math.isnan(parse_score("Score: 7"))  # outside the rubric's 0..5
    assert math.isnan(parse_score("no score here"))


def test_rubric_prompt_is_sers() -> None:
    text = judge_prompts.RUBRIC_SYSTEM
    assert text.startswith("Review the user's question and the corresponding response using the additive 5-point")
    for opener in ("Add 1 point", "Add another point", "Award a third point", "Grant a fourth point",
                   "Bestow a fifth point"):
        assert opener in text
    assert "Score: <total score>" in text and "\\" not in text
    user = judge_prompts.RUBRIC_USER.format(question="Q{x}", answer="A}")
    assert user == "<Question>: Q{x}\n\n<response>: A}"

# ---------------------------------------------------------------------------------------------
# Local judges
# ---------------------------------------------------------------------------------------------


def test_gold_judge_compares_by_gold_reward() -> None:
    judge = GoldJudge(WorldConfig())
    assert isinstance(judge, Judge) and isinstance(judge, Scorer)
    prompts = ["<bos> 3 1 2 =>"] * 3
    good, short, long_ = "1 2 3 <eos>", "1 2 <eos>", "1 2 3 3 <eos>"
    assert judge.compare(prompts, [good, short, good], [short, good, good]) == [1.0, 0.0, 0.5]
    assert judge.compare(prompts[:1], [good], [long_]) == [1.0]


def test_reward_model_judge_compares_by_score() -> None:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from r2m.models.reward import RewardModel
    from r2m.world.tokenizer import build_tokenizer

    tok = build_tokenizer("rm")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id))
    judge = RewardModelJudge(RewardModel(model, tok))
    prompts = ["<bos> 3 1 2 =>", "<bos> 5 4 =>"]
    a, b = ["1 2 3 <eos>", "4 5 <eos>"], ["3 2 1 <eos>", "4 5 <eos>"]
    s_a, s_b = judge.score(prompts, a), judge.score(prompts, b)
    expected = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(s_a, s_b)]
    assert judge.compare(prompts, a, b) == expected
    assert expected[1] == 0.5  # identical texts tie


def test_build_judge_kinds(server) -> None:
    assert isinstance(build_judge(JudgeKind.GOLD, world=WorldConfig()), GoldJudge)
    assert isinstance(build_judge(JudgeKind.API, api=_cfg(server)), ApiJudge)
    with pytest.raises(ConfigError, match="reward model"):
        build_judge(JudgeKind.REWARD_MODEL)

# ---------------------------------------------------------------------------------------------
# API judge
# ---------------------------------------------------------------------------------------------


def test_pairwise_asks_both_orders_consistent_judge(server) -> None:
    judge = ApiJudge(_cfg(server))
    details = judge.compare_detailed(PROMPTS, A, B)
    assert [d.outcome for d in details] == [1.0, 0.0, 0.5, 0.5]
    assert details[0].first == Verdict.A and details[0].second == Verdict.B  # same answer, both positions
    assert server.requests == 2 * len(PROMPTS)
    assert server.paths == {"/v1/chat/completions"}
    assert server.auth == {f"Bearer {KEY}"}
    assert judge.compare(PROMPTS, B, A) == [0.0, 1.0, 0.5, 0.5]  # swapping a and b mirrors the outcomes


def test_position_biased_judge_gives_ties() -> None:
    pytest.importorskip("openai", reason="the API judge's client is the r2m[openai] extra")
    server = FakeServer(position_biased_judge)
    try:
        details = ApiJudge(_cfg(server)).compare_detailed(PROMPTS, A, B)
    finally:
        server.close()
    assert [d.outcome for d in details] == [0.5] * len(PROMPTS)
    assert all(d.first == Verdict.A and d.second == Verdict.A for d in details)


def test_single_answer_rubric_mode(server) -> None:
    judge = ApiJudge(_cfg(server, mode=JudgeMode.SINGLE))
    scores = judge.score(["q"] * 3, [f"{MARKER}!", "meh", "GARBLE"])
    assert scores[:2] == [4.0, 1.0] and math.isnan(scores[2])
    assert judge.stats.unparseable == 1
    out = judge.compare(["q"] * 3, [f"{MARKER}!", "meh", "GARBLE"], ["meh", f"{MARKER}", "meh"])
    assert out[:2] == [1.0, 0.0] and math.isnan(out[2])


def test_retries_server_errors_then_succeeds(server) -> None:
    server.failures = [500, 503]
    client = ChatClient(_cfg(server))
    assert client.complete(neutral_messages()) == "They are alike. [[C]]"
    assert server.requests == 3 and client.stats.retries == 2


def test_retries_rate_limit(server) -> None:
    server.failures = [429, 429]
    judge = ApiJudge(_cfg(server))
    assert judge.compare(PROMPTS[:1], A[:1], B[:1]) == [1.0]
    assert server.requests == 4 and judge.stats.retries == 2


def test_retries_timeouts(server) -> None:
    server.delays = [1.0]  # the first request outlives the client's timeout
    client = ChatClient(_cfg(server, timeout=0.2))
    assert client.complete(neutral_messages()).endswith("[[C]]")
    assert client.stats.retries == 1 and server.requests == 2


def test_gives_up_with_a_clear_error_naming_the_endpoint(server) -> None:
    server.failures = [500] * 10
    client = ChatClient(_cfg(server, max_retries=2))
    with pytest.raises(JudgeError) as err:
        client.complete(neutral_messages())
    assert server.requests == 3
    msg = str(err.value)
    assert f"{server.base_url}/chat/completions" in msg and "3 attempts" in msg and "HTTP 500" in msg
    assert KEY not in msg and "***" in msg  # the server echoed the key; the error redacts it


def test_client_errors_are_not_retried(server) -> None:
    server.failures = [401]
    with pytest.raises(JudgeError, match="HTTP 401"):
        ChatClient(_cfg(server)).complete(neutral_messages())
    assert server.requests == 1


def test_cache_makes_a_rerun_free(server, tmp_path) -> None:
    cfg = _cfg(server, cache_dir=str(tmp_path / "cache"))
    first = ApiJudge(cfg).compare(PROMPTS, A, B)
    assert server.requests == 2 * len(PROMPTS)
    again = ApiJudge(cfg)  # a fresh client, as in a rerun
    assert again.compare(PROMPTS, A, B) == first
    assert server.requests == 2 * len(PROMPTS) and again.stats.cache_hits == 2 * len(PROMPTS)
    # A different judge model misses the cache.
    ApiJudge(_cfg(server, cache_dir=str(tmp_path / "cache"), model="other")).compare(PROMPTS[:1], A[:1], B[:1])
    assert server.requests == 2 * len(PROMPTS) + 2


def test_duplicate_conversations_cost_one_request(server) -> None:
    client = ChatClient(_cfg(server))
    replies = client.complete_many([neutral_messages()] * 5)
    assert len(set(replies)) == 1 and server.requests == 1


def test_bounded_concurrency(server) -> None:
    server.delay = 0.05
    client = ChatClient(_cfg(server, concurrency=3))
    client.complete_many([neutral_messages(str(i)) for i in range(12)])
    assert server.requests == 12
    assert 1 < server.max_in_flight <= 3


def test_key_never_leaks(server, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache"
    cfg = _cfg(server, cache_dir=str(cache), max_retries=1)
    judge = ApiJudge(cfg)
    server.failures = [500]  # a retry is logged, with the server's body echoing the key
    judge.compare(PROMPTS, A, B)
    server.failures = [500, 500]
    with pytest.raises(JudgeError) as err:
        judge.score(["fresh"], ["x"])  # one conversation: both attempts fail
    assert server.auth == {f"Bearer {KEY}"}  # the key was used...
    assert "retry" in caplog.text
    leaks = [caplog.text, str(err.value), repr(err.value), repr(judge), repr(judge.client), repr(cfg), str(cfg)]
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files
    leaks += [p.read_text() for p in files]
    assert not [text for text in leaks if KEY in text]  # ...and written nowhere


def test_key_from_file_and_missing_key(server, tmp_path, monkeypatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    monkeypatch.delenv("R2M_TEST_JUDGE_KEY")
    ChatClient(_cfg(server, api_key_file=str(key_file))).complete(neutral_messages())
    assert server.auth == {"Bearer sk-from-file"}
    with pytest.raises(ConfigError, match="R2M_TEST_JUDGE_KEY"):
        ChatClient(_cfg(server))
    with pytest.raises(ConfigError, match="api_key_file"):
        ChatClient(_cfg(server, api_key_file=str(tmp_path / "missing")))


def test_without_the_openai_extra_the_api_judge_says_how_to_install_it(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(ConfigError, match=r"the API judge .* openai client, which is not installed: "
                                          r"pip install 'r2m\[openai\]'"):
        ChatClient(JudgeConfig(api_key_env="R2M_TEST_JUDGE_KEY", cache_dir=""))


def test_a_null_reply_is_unparseable_not_a_crash(server) -> None:
    server.reply = lambda messages: None  # the fake then sends {"choices": [{"message": {"content": null}}]}
    assert ChatClient(_cfg(server)).complete(neutral_messages()) == ""  # a null content: unparseable, no crash


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="judge.concurrency"):
        JudgeConfig(concurrency=0)
    with pytest.raises(ConfigError, match="judge.base_url"):
        JudgeConfig(base_url="localhost:8000")
    with pytest.raises(ConfigError, match="judge.max_backoff_s"):
        JudgeConfig(backoff_s=2.0, max_backoff_s=1.0)
    with pytest.raises(ConfigError) as err:
        JudgeConfig(api_key_env=KEY)  # a key pasted where the variable's name belongs
    assert KEY not in str(err.value) and "NAME" in str(err.value)


# ---------------------------------------------------------------------------------------------
# eval.judge: the API judge as config, R2M_JUDGE_* as fallback
# ---------------------------------------------------------------------------------------------


def test_judge_config_precedence_config_then_env_then_default() -> None:
    default = resolve_judge(JudgeConfig(), environ={})
    assert (default.base_url, default.model, default.api_key_env, default.api_key_file) == \
        ("https://api.openai.com/v1", "gpt-4o-2024-08-06", "OPENAI_API_KEY", None)
    assert (default.concurrency, default.max_retries, default.timeout, default.cache_dir, default.mode) == \
        (4, 5, 60.0, ".r2m_judge_cache", JudgeMode.PAIRWISE)
    assert resolve_judge(default, environ={"R2M_JUDGE_MODEL": "env-model"}) == default  # resolved: nothing to fill
    env = {"R2M_JUDGE_BASE_URL": "http://env:1/v1", "R2M_JUDGE_MODEL": "env-model", "R2M_JUDGE_KEY_ENV": "ENV_KEY_VAR",
           "R2M_JUDGE_CONCURRENCY": "7", "R2M_JUDGE_MAX_RETRIES": "2", "R2M_JUDGE_TIMEOUT": "3.5",
           "R2M_JUDGE_MODE": "single", "R2M_JUDGE_CACHE": "/tmp/env-cache"}
    from_env = resolve_judge(JudgeConfig(), environ=env)
    assert (from_env.base_url, from_env.model, from_env.api_key_env, from_env.concurrency, from_env.max_retries,
            from_env.timeout, from_env.mode, from_env.cache_dir) == \
        ("http://env:1/v1", "env-model", "ENV_KEY_VAR", 7, 2, 3.5, JudgeMode.SINGLE, "/tmp/env-cache")
    cfg = JudgeConfig(base_url="http://cfg:2/v1", model="cfg-model", api_key_env="CFG_KEY_VAR", concurrency=3,
                      max_retries=0, timeout=9.0, mode=JudgeMode.PAIRWISE, cache_dir="")
    both = resolve_judge(cfg, environ=env)  # the config wins field by field
    assert (both.base_url, both.model, both.api_key_env, both.concurrency, both.max_retries, both.timeout,
            both.mode, both.cache_dir) == ("http://cfg:2/v1", "cfg-model", "CFG_KEY_VAR", 3, 0, 9.0,
                                           JudgeMode.PAIRWISE, "")  # cache_dir "" disables the cache
    assert resolve_judge(JudgeConfig(model="m"), environ={"R2M_JUDGE_CACHE": ""}).cache_dir == ""
    with pytest.raises(ConfigError, match="R2M_JUDGE_CONCURRENCY"):
        resolve_judge(JudgeConfig(), environ={"R2M_JUDGE_CONCURRENCY": "lots"})


def test_judge_mode_is_an_enum_validated_where_it_is_read() -> None:
    # eval.judge.mode is a JudgeMode once parsed.
    assert load_config(None, ["eval.judge.mode=single"]).eval.judge.mode is JudgeMode.SINGLE
    with pytest.raises(ConfigError, match=r"eval\.judge\.mode: expected one of pairwise, single, got 'best'"):
        load_config(None, ["eval.judge.mode=best"])
    with pytest.raises(ConfigError, match=r"R2M_JUDGE_MODE: expected one of pairwise, single, got 'best'"):
        resolve_judge(JudgeConfig(), environ={"R2M_JUDGE_MODE": "best"})
    with pytest.raises(ConfigError, match=r"judge\.mode: expected a JudgeMode"):
        JudgeConfig(mode="single")  # a Python caller passes the Enum; strings are read by the parser and env


def test_judge_config_fields_are_validated_without_echoing_a_key() -> None:
    cfg = load_config(None, ["eval.judge.model=m", "eval.judge.concurrency=2", "eval.judge.timeout=1.5"])
    assert cfg.eval.judge == JudgeConfig(model="m", concurrency=2, timeout=1.5)
    for override, field in [("eval.judge.concurrency=0", "eval.judge.concurrency"),
                            ("eval.judge.max_retries=-1", "eval.judge.max_retries"),
                            ("eval.judge.timeout=0", "eval.judge.timeout"), ("eval.judge.mode=best", "eval.judge.mode"),
                            ("eval.judge.base_url=localhost:1", "eval.judge.base_url"),
                            ("eval.judge.api_key=x", "eval.judge.api_key: unknown key")]:
        with pytest.raises(ConfigError, match=field):
            load_config(None, [override])
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"eval.judge.api_key_env={KEY}"])
    assert "eval.judge.api_key_env" in str(err.value) and KEY not in str(err.value)


def _write_responses(path, prompts, responses) -> str:
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(prompts, responses)))
    return str(path)


def test_winrate_cli_reads_the_judge_from_config_and_never_writes_the_key(server, tmp_path, monkeypatch, caplog,
                                                                          capsys) -> None:
    from r2m.cli import main

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("R2M_JUDGE_MODEL", "env-model")  # the config's model wins over the environment's
    cache = tmp_path / "cache"
    overrides = [f"eval.judge.base_url={server.base_url}", "eval.judge.model=fake-judge",
                 "eval.judge.api_key_env=R2M_TEST_JUDGE_KEY", f"eval.judge.cache_dir={cache}",
                 "eval.judge.concurrency=2", "eval.judge.max_retries=2", "eval.judge.timeout=5"]
    policy = _write_responses(tmp_path / "policy.jsonl", PROMPTS, A)
    ref = _write_responses(tmp_path / "ref.jsonl", PROMPTS, B)
    server.failures = [500]  # one retry, logged, with the server's error body echoing the key
    assert main(["eval", "winrate", *overrides, "--judge", "api", "--policy-responses", policy,
                 "--ref-responses", ref]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["winrate/n"] == 4 and result["winrate/win_rate"] == 0.5  # wins 1, loss 1, ties 2 (marker_judge)
    assert server.models == {"fake-judge"} and server.auth == {f"Bearer {KEY}"} and server.max_in_flight <= 2
    assert "retry" in caplog.text
    saved = tmp_path / "config.yaml"
    save_config(load_config(None, overrides), saved)
    assert main(["config", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "R2M_TEST_JUDGE_KEY" in saved.read_text() and "R2M_TEST_JUDGE_KEY" in printed  # the name, not the key
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert files
    texts = [caplog.text, out.out, out.err, printed, saved.read_text(), *(p.read_text() for p in files)]
    assert not [t for t in texts if KEY in t]
    # A rerun is answered from the cache configured in eval.judge.cache_dir.
    before = server.requests
    assert main(["eval", "winrate", *overrides, "--judge", "api", "--policy-responses", policy,
                 "--ref-responses", ref]) == 0
    assert server.requests == before
