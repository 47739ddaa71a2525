"""IreneClient retries what is safe to retry, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from irene.client import IreneClient, IreneHTTPError, pairs


class FlakyServer:
    """Answers POSTs with the queued statuses first, then 200 with a canned body."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.calls += 1
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status = outer.statuses.pop(0) if outer.statuses else 200
                if status == 200:
                    reply = {"results": [[{"id": "a", "score": 0.5}] for _ in body["texts"]]}
                else:
                    reply = {"detail": "backend unavailable"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def flaky(request):
    server = FlakyServer(request.param)
    yield server
    server.close()


@pytest.mark.parametrize("flaky", [[503, 502, 500]], indirect=True)
def test_retries_unavailable_backends(flaky):
    with IreneClient(flaky.url, retries=3, backoff_s=0.01) as c:
        assert pairs(c.query(["q"], k=1)) == [[("a", 0.5)]]
        assert flaky.calls == 4 and c.retried == 3


@pytest.mark.parametrize("flaky", [[503, 503, 503]], indirect=True)
def test_gives_up_after_the_retries(flaky):
    with (
        IreneClient(flaky.url, retries=2, backoff_s=0.01) as c,
        pytest.raises(IreneHTTPError, match="503"),
    ):
        c.query(["q"], k=1)
    assert flaky.calls == 3


@pytest.mark.parametrize("flaky", [[422]], indirect=True)
def test_client_errors_are_not_retried(flaky):
    with (
        IreneClient(flaky.url, retries=3, backoff_s=0.01) as c,
        pytest.raises(IreneHTTPError, match="422"),
    ):
        c.query(["q"], k=1)
    assert flaky.calls == 1


def test_connection_refused_is_retried_then_raised():
    import httpx

    from irene.net import free_local_port

    with IreneClient(f"http://127.0.0.1:{free_local_port()}", retries=2, backoff_s=0.01) as c:
        with pytest.raises(httpx.TransportError):
            c.query(["q"], k=1)
        assert c.retried == 2


# --------------------------------------------------------------------------- records
class RecordingServer:
    """Keeps every request (method, path, JSON body) and answers like the app would."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                outer.requests.append(("GET", self.path, None))
                if self.path.startswith("/v1/items/sku%2F1"):
                    self._reply(200, {"id": "sku/1", "text": "t", "metadata": {"a": 1}})
                else:
                    self._reply(404, {"detail": "not found"})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.requests.append(("POST", self.path, body))
                if self.path == "/v1/items":
                    reply = {
                        "results": [{"id": it["id"], "status": "created"} for it in body["items"]]
                    }
                else:  # /v1/query
                    hit = {"id": "a", "score": 0.5, "source": "generated", "text": "t"}
                    reply = {"results": [[hit] for _ in body["texts"]]}
                self._reply(200, reply)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def recording():
    server = RecordingServer()
    yield server
    server.httpd.shutdown()


def test_ingest_sends_metadata_and_query_asks_for_payload(recording):
    with IreneClient(recording.url, retries=0) as c:
        c.ingest([("a", "x"), ("b", "y", {"brand": "acme", "tags": ["1"]}), ("c", "z", None)])
        c.ingest([{"id": "d", "text": "w", "metadata": {"n": 2}}])
        assert pairs(c.query(["q"], k=3)) == [[("a", 0.5)]]
        hits = c.query(["q", "r"], k=3, with_payload=True)
        assert hits[0][0] == {"id": "a", "score": 0.5, "source": "generated", "text": "t"}
        c.query(["q"], k=3, with_payload=("metadata", "version"))
        assert c.get("sku/1") == {"id": "sku/1", "text": "t", "metadata": {"a": 1}}
        assert c.get("missing") is None
    bodies = [b for _, _, b in recording.requests]
    assert bodies[0]["items"] == [
        {"id": "a", "text": "x"},
        {"id": "b", "text": "y", "metadata": {"brand": "acme", "tags": ["1"]}},
        {"id": "c", "text": "z"},
    ]
    assert bodies[1]["items"] == [{"id": "d", "text": "w", "metadata": {"n": 2}}]
    assert "with_payload" not in bodies[2]
    assert bodies[3]["with_payload"] is True
    assert bodies[4]["with_payload"] == ["metadata", "version"]
    assert recording.requests[5][:2] == ("GET", "/v1/items/sku%2F1")
