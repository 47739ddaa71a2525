from __future__ import annotations

import pytest

from irene.oracle.base import BudgetExceeded, OracleConfig, OracleError
from irene.oracle.cache import CachedOracle, OracleCache
from irene.oracle.http import HttpOracle, parse_reply
from tests.oracle.fakes import ScriptedServer, chat_reply

PAIRS = [("a dog is a domesticated canine", "canine"), ("a violin", "musical instrument")]


def make(server: ScriptedServer, sleeps: list[float] | None = None, **kw) -> HttpOracle:
    cfg = OracleConfig(
        backend="http",
        model="test-model",
        base_url=server.url,
        timeout_s=kw.pop("timeout_s", 5.0),
        max_retries=kw.pop("max_retries", 3),
        backoff_base_s=0.01,
        backoff_max_s=kw.pop("backoff_max_s", 5.0),
        concurrency=kw.pop("concurrency", 2),
        **kw,
    )
    record = sleeps if sleeps is not None else []
    return HttpOracle(cfg, sleep=record.append, environ={"IRENE_ORACLE_API_KEY": "sk-test"})


def test_chat_request_shape_and_p_yes():
    with ScriptedServer(default=("ok", 0.8)) as srv:
        oracle = make(srv, usd_per_1k_prompt_tokens=1.0)
        rel = oracle.score(PAIRS)
    assert rel == pytest.approx([0.8, 0.8], abs=1e-5)
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "test-model"
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["max_tokens"] == 1
    assert "Answer Yes or No" in body["messages"][-1]["content"]
    st = oracle.stats
    assert (st.calls, st.pairs, st.prompt_tokens, st.completion_tokens) == (2, 2, 40, 2)
    assert st.cost_usd == pytest.approx(0.04)


def test_completions_endpoint():
    with ScriptedServer(default=("ok", 0.3)) as srv:
        rel = make(srv, endpoint="completions").score(PAIRS[:1])
    assert rel[0] == pytest.approx(0.3, abs=1e-5)
    assert srv.requests[0]["path"] == "/v1/completions"
    assert srv.requests[0]["body"]["logprobs"] == 5


def test_429_retry_after_then_success():
    sleeps: list[float] = []
    with ScriptedServer() as srv:
        srv.script = [("status", 429, 2)]
        rel = make(srv, sleeps, concurrency=1).score(PAIRS[:1])
    assert rel[0] == pytest.approx(0.8, abs=1e-5)
    assert sleeps == [2.0]  # Retry-After honoured (not the 0.01 s backoff)
    assert len(srv.requests) == 2


def test_500_then_success_with_backoff():
    sleeps: list[float] = []
    with ScriptedServer() as srv:
        srv.script = [("status", 500, None), ("status", 503, None)]
        rel = make(srv, sleeps, concurrency=1).score(PAIRS[:1])
    assert rel[0] == pytest.approx(0.8, abs=1e-5)
    assert len(sleeps) == 2 and 0.01 <= sleeps[0] <= 0.015 and 0.02 <= sleeps[1] <= 0.03


def test_timeout_then_success():
    with ScriptedServer() as srv:
        srv.script = [("sleep", 1.0)]
        oracle = make(srv, concurrency=1, timeout_s=0.2)
        rel = oracle.score(PAIRS[:1])
    assert rel[0] == pytest.approx(0.8, abs=1e-5)
    assert oracle.stats.calls == 2


@pytest.mark.parametrize(
    "raw",
    ["not json", '{"choices": []}', '{"choices": [{"message": {"content": "Maybe"}}]}'],
)
def test_malformed_replies_retry_then_clear_error_and_nothing_cached(tmp_path, raw):
    with ScriptedServer(default=("raw", raw)) as srv:
        oracle = make(srv, max_retries=2, concurrency=1)
        cache = OracleCache(str(tmp_path / "cache.sqlite"))
        with pytest.raises(OracleError, match="failed after 3 attempts"):
            CachedOracle(oracle, cache).score(PAIRS[:1])
    assert len(srv.requests) == 3
    assert len(cache) == 0


def test_malformed_once_then_success_is_cached(tmp_path):
    with ScriptedServer() as srv:
        srv.script = [("raw", "{oops")]
        cache = OracleCache(str(tmp_path / "cache.sqlite"))
        oracle = CachedOracle(make(srv, concurrency=1), cache)
        oracle.score(PAIRS[:1])
        again = oracle.score(PAIRS[:1])
    assert len(cache) == 1 and again[0] == pytest.approx(0.8, abs=1e-5)
    assert len(srv.requests) == 2  # the second score() was a cache hit


def test_client_error_is_not_retried():
    with ScriptedServer(default=("status", 401, None)) as srv:
        with pytest.raises(OracleError, match="HTTP 401"):
            make(srv).score(PAIRS[:1])
    assert len(srv.requests) == 1


def test_budget_exceeded_and_partial_batch_not_cached(tmp_path):
    with ScriptedServer() as srv:
        cache = OracleCache(str(tmp_path / "c.sqlite"))
        oracle = CachedOracle(make(srv, max_calls=3, concurrency=1), cache)
        oracle.score(PAIRS)  # 2 calls
        with pytest.raises(BudgetExceeded, match="budget of 3"):
            oracle.score([("x", "y"), ("z", "w")])  # 3rd ok, 4th over budget
    assert len(srv.requests) == 3
    assert len(cache) == 2  # only the first, fully successful batch


def test_parse_reply_variants():
    p, pt, ct = parse_reply(chat_reply(0.25), "chat", text_fallback=False)
    assert p == pytest.approx(0.25, abs=1e-6) and (pt, ct) == (20, 1)
    only_yes = {
        "choices": [
            {
                "logprobs": {
                    "content": [
                        {
                            "top_logprobs": [
                                {"token": " yes", "logprob": -0.1},
                                {"token": "Sure", "logprob": -3.0},
                            ]
                        }
                    ]
                }
            }
        ]
    }
    p, _, _ = parse_reply(only_yes, "chat", text_fallback=False)
    assert 0.9 < p < 1.0  # No given the floor logprob -3.0
    text_only = {"choices": [{"message": {"content": "No."}}]}
    assert parse_reply(text_only, "chat", text_fallback=True)[0] == 0.0
    with pytest.raises(ValueError):
        parse_reply(text_only, "chat", text_fallback=False)
