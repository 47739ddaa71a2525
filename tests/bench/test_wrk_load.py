"""bench/wrk_load.py against a tiny local HTTP server: wrk sends every body byte for byte,
counts non-2xx answers as errors, and its totals add up."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest

from tests.bench import load_bench
from tests.helpers import json_http_server


@pytest.fixture
def server():
    seen: Counter = Counter()
    lock = threading.Lock()

    def answer(method, path, headers, body):
        with lock:
            seen[(path, headers["Content-Type"], body["text"])] += 1
        return (500 if body["text"] == "fail" else 200), {"ok": True}

    with json_http_server(answer) as url:
        yield url, seen


def test_run_wrk_sends_every_body_and_counts_failures(server):
    wrk_load = load_bench("wrk_load")
    url, seen = server
    texts = ["plain", 'quotes " and \\ backslash', "long ]] brackets ]=] here", "fail"]
    bodies = [json.dumps({"text": t, "k": 3}) for t in texts]

    r = wrk_load.run_wrk(url, "/v1/query", bodies, connections=2, duration_s=1)

    answered = sum(seen.values())
    assert {key[0] for key in seen} == {"/v1/query"}
    assert {key[1] for key in seen} == {"application/json"}
    assert {key[2] for key in seen} == set(texts)  # every body arrived intact
    # wrk's totals agree with the server's: 2xx answers in n, the 500s in errors (wrk may stop
    # with a request or two in flight that the server answered, never the other way round)
    fails = seen[("/v1/query", "application/json", "fail")]
    assert 0 < r["n"] <= answered - fails <= r["n"] + 2
    assert 0 < r["errors"] <= fails <= r["errors"] + 2
    assert r["qps"] == pytest.approx(r["n"] / r["wall_s"], rel=0.01)
    assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert r["client_cpu_s"] >= 0


def test_lua_script_rejects_no_bodies():
    wrk_load = load_bench("wrk_load")
    with pytest.raises(ValueError, match="bodies"):
        wrk_load.lua_script("/v1/query", [])


def test_run_wrk_gets():
    wrk_load = load_bench("wrk_load")
    seen: Counter = Counter()

    def answer(method, path, headers, body):
        seen[(method, path, body)] += 1
        return 200, {"status": "ok"}

    with json_http_server(answer) as url:
        r = wrk_load.run_wrk(url, "/healthz", [""], connections=1, duration_s=1, method="GET")
    assert set(seen) == {("GET", "/healthz", None)}
    assert r["errors"] == 0 and 0 < r["n"] <= seen[("GET", "/healthz", None)] <= r["n"] + 1
