"""bench/wrk_load.py against a tiny local HTTP server: wrk sends every body byte for byte,
counts non-2xx answers as errors, and its totals add up."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.bench import load_bench


@pytest.fixture
def server():
    seen: Counter = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects

        def do_POST(self):  # noqa: N802 -- http.server's hook name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            text = json.loads(body)["text"]
            with lock:
                seen[(self.path, self.headers["Content-Type"], text)] += 1
            code = 500 if text == "fail" else 200
            out = b'{"ok": true}'
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


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
