"""IreneClient retries what is safe to retry, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from irene.client import IreneClient, IreneHTTPError


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
        assert c.query(["q"], k=1) == [[("a", 0.5)]]
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
