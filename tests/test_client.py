"""IreneClient retries what is safe to retry, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import pytest

from irene.client import IreneClient, IreneHTTPError, pairs
from tests.helpers import json_http_server


class FlakyServer:
    """Answers POSTs with the queued statuses first, then 200 with a canned body."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.calls = 0
        self.url = ""  # set by the fixture

    def answer(self, method, path, headers, body):
        self.calls += 1
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200:
            return 200, {"results": [[{"id": "a", "score": 0.5}] for _ in body["texts"]]}
        return status, {"detail": "backend unavailable"}


@pytest.fixture
def flaky(request):
    server = FlakyServer(request.param)
    with json_http_server(server.answer) as server.url:
        yield server


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
        self.url = ""  # set by the fixture

    def answer(self, method, path, headers, body):
        self.requests.append((method, path, body))
        if method == "GET":
            if path.startswith("/v1/items/sku%2F1"):
                return 200, {"id": "sku/1", "text": "t", "metadata": {"a": 1}}
            return 404, {"detail": "not found"}
        if path == "/v1/items":
            return 200, {"results": [{"id": it["id"], "status": "created"} for it in body["items"]]}
        hit = {"id": "a", "score": 0.5, "source": "generated", "text": "t"}  # /v1/query
        return 200, {"results": [[hit] for _ in body["texts"]]}


@pytest.fixture
def recording():
    server = RecordingServer()
    with json_http_server(server.answer) as server.url:
        yield server


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
