"""A small Python client for the Serve app's HTTP API (``serve_app``).

    client = IreneClient("http://127.0.0.1:8000", token=os.environ["IRENE_API_TOKEN"])
    client.wait_ready()
    client.ingest([("sku-1", "red running shoe"), ...])     # batched POST /v1/items
    hits = client.query(["trail shoes"], k=10)              # [[("sku-1", 0.83), ...]]

Batches go out over ``concurrency`` connections; results keep the input order. Any non-2xx
reply raises :class:`IreneHTTPError` with the server's message.

Retries: every call here is safe to repeat (queries and reads are idempotent; an ingest is an
upsert by id, a delete of a deleted id is a no-op), so a request that fails on the transport
(connection refused or reset: a replica restarting), with 500 (what Serve's proxy answers
when the replica handling the request dies; the app itself answers no 500) or with
502/503/504 (a backend unavailable) is sent again up to ``retries`` times with exponential
backoff from ``backoff_s``. 4xx replies are never retried.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx


class IreneHTTPError(RuntimeError):
    pass


RETRY_STATUS = frozenset({500, 502, 503, 504})


class IreneClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 120.0,
        concurrency: int = 4,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        self.retries, self.backoff_s = retries, backoff_s
        self.retried = 0  # requests sent again so far
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=concurrency)
        self.http = httpx.Client(
            base_url=base_url, headers=headers, timeout=timeout_s, limits=limits
        )
        self.concurrency = concurrency

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> IreneClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _post(self, path: str, body: dict) -> dict:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self.http.post(path, json=body)
            except httpx.TransportError:
                if last:
                    raise
            else:
                if r.status_code < 300:
                    return r.json()
                if r.status_code not in RETRY_STATUS or last:
                    raise IreneHTTPError(f"POST {path}: HTTP {r.status_code}: {r.text[:500]}")
            self.retried += 1
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def wait_ready(self, timeout_s: float = 120.0) -> dict:
        """Poll ``GET /readyz`` until it answers 200; returns its body."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                r = self.http.get("/readyz")
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.http.base_url} not ready after {timeout_s:.0f}s")
            time.sleep(0.5)

    def _map(self, fn, chunks: list) -> list:
        if self.concurrency <= 1 or len(chunks) <= 1:
            return [fn(c) for c in chunks]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, chunks))

    def ingest(self, items: Sequence[tuple[str, str]], batch_size: int = 256) -> list[dict]:
        """Add/upsert ``(id, text)`` items; returns the per-item statuses, in order."""
        chunks = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]

        def send(chunk):
            body = {"items": [{"id": i, "text": t} for i, t in chunk]}
            return self._post("/v1/items", body)["results"]

        return [st for res in self._map(send, chunks) for st in res]

    def query(
        self, texts: Sequence[str], k: int, batch_size: int = 64
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` ``(id, score)`` lists for every text, in order."""
        chunks = [list(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)]

        def send(chunk):
            res = self._post("/v1/query", {"texts": chunk, "k": k})["results"]
            return [[(h["id"], h["score"]) for h in hits] for hits in res]

        return [hits for res in self._map(send, chunks) for hits in res]

    def fetch(self, ids: Sequence[str], vectors: bool = False, batch_size: int = 256) -> list:
        """``{"id", "dim", "norm"[, "vector"]}`` per id (None where absent), in order."""
        chunks = [list(ids[s : s + batch_size]) for s in range(0, len(ids), batch_size)]

        def send(chunk):
            return self._post("/v1/items/fetch", {"ids": chunk, "include_vectors": vectors})[
                "items"
            ]

        return [it for res in self._map(send, chunks) for it in res]

    def delete(self, ids: Sequence[str], batch_size: int = 256) -> list[bool]:
        """Delete items by id; whether each was present, in order."""
        chunks = [list(ids[s : s + batch_size]) for s in range(0, len(ids), batch_size)]

        def send(chunk):
            return [r["deleted"] for r in self._post("/v1/items/delete", {"ids": chunk})["results"]]

        return [d for res in self._map(send, chunks) for d in res]

    def count(self) -> int:
        return int(self.wait_ready(timeout_s=0)["index_count"])
