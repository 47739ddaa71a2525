"""A small Python client for the Serve app's HTTP API (``serve_app``).

    client = IreneClient("http://127.0.0.1:8000", token=os.environ["IRENE_API_TOKEN"])
    client.wait_ready()
    client.ingest([("sku-1", "red running shoe"), ...])     # batched POST /v1/items
    client.ingest([("sku-2", "blue sandal", {"brand": "acme", "price": 19.5})])  # + metadata
    hits = client.query(["trail shoes"], k=10)  # [[{"id": "sku-1", "score": 0.83, "source": ...}]]
    hits = client.query(["trail shoes"], k=10, with_payload=True)  # + "text", "metadata"
    item = client.get("sku-2")  # {"id", "dim", "norm", "text", "metadata", "source", "version"}

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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

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

    def _request(self, method: str, path: str, ok404: bool = False, **kw) -> dict | None:
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = self.http.request(method, path, **kw)
            except httpx.TransportError:
                if last:
                    raise
            else:
                if r.status_code < 300:
                    return r.json()
                if ok404 and r.status_code == 404:
                    return None
                if r.status_code not in RETRY_STATUS or last:
                    raise IreneHTTPError(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
            self.retried += 1
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, json=body)

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

    def ingest(self, items: Sequence[tuple | dict], batch_size: int = 256) -> list[dict]:
        """Add/upsert items: ``(id, text)`` or ``(id, text, metadata)`` tuples, or
        ``{"id", "text"[, "metadata"]}`` dicts; returns the per-item statuses, in order.
        Metadata: a flat dict of strings, numbers, bools and lists of strings."""
        chunks = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]

        def send(chunk):
            body = {"items": [_item(it) for it in chunk]}
            return self._post("/v1/items", body)["results"]

        return [st for res in self._map(send, chunks) for st in res]

    def query(
        self,
        texts: Sequence[str],
        k: int,
        batch_size: int = 64,
        with_payload: bool | Sequence[str] = False,
        filter: dict | None = None,
        score_threshold: float | None = None,
    ) -> list[list[dict]]:
        """Top-``k`` hits for every text, in order, as the server answers them: ``{"id",
        "score", "source"}`` plus the fields ``with_payload`` asks for (True: text + metadata;
        a list of "text", "metadata", "version"). ``filter``: only items whose record matches
        (``{"must": [{"key": "shop", "match": {"value": "a"}}]}``; grammar in the README);
        ``score_threshold``: drop hits below it. :func:`pairs` makes ``(id, score)`` rows."""
        chunks = [list(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)]
        body: dict[str, Any] = {"k": k}
        if with_payload:
            body["with_payload"] = (
                with_payload if isinstance(with_payload, bool) else list(with_payload)
            )
        if filter is not None:
            body["filter"] = filter
        if score_threshold is not None:
            body["score_threshold"] = score_threshold

        def send(chunk):
            return self._post("/v1/query", {**body, "texts": chunk})["results"]

        return [hits for res in self._map(send, chunks) for hits in res]

    def get(self, id_: str, vector: bool = False) -> dict | None:
        """One item ``{"id", "dim", "norm", "text", "metadata", "source", "version"[,
        "vector"]}``, or None when absent (ids a URL path cannot carry: use :meth:`fetch`)."""
        params = {"include_vector": "true"} if vector else None
        return self._request("GET", f"/v1/items/{quote(id_, safe='')}", ok404=True, params=params)

    def fetch(self, ids: Sequence[str], vectors: bool = False, batch_size: int = 256) -> list:
        """``{"id", "dim", "norm", "text", "metadata", "source", "version"[, "vector"]}`` per
        id (None where absent), in order."""
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

    def count(self, filter: dict | None = None) -> int:
        """Items in the index (that ``filter`` matches)."""
        if filter is None:
            return int(self.wait_ready(timeout_s=0)["index_count"])
        return int(self._post("/v1/count", {"filter": filter})["count"])

    def scroll(self, filter: dict | None = None, page_size: int = 256) -> Iterator[dict]:
        """Every item (that ``filter`` matches) once, page by page in a stable order:
        ``{"id", "text", "metadata", "source", "version"}``."""
        cursor = None
        while True:
            body: dict[str, Any] = {"limit": page_size, "cursor": cursor}
            if filter is not None:
                body["filter"] = filter
            page = self._post("/v1/items/scroll", body)
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def delete_where(self, filter: dict) -> int:
        """Delete every item ``filter`` matches; returns how many."""
        return int(self._post("/v1/items/delete_by_filter", {"filter": filter})["deleted"])


def _item(it: tuple | dict) -> dict:
    if isinstance(it, dict):
        return {k: v for k, v in it.items() if v is not None}
    id_, text, *meta = it
    out = {"id": id_, "text": text}
    if meta and meta[0] is not None:
        out["metadata"] = meta[0]
    return out


def pairs(rows: list[list[dict]]) -> list[list[tuple[str, float]]]:
    """``(id, score)`` per hit of :meth:`IreneClient.query`'s rows."""
    return [[(h["id"], h["score"]) for h in row] for row in rows]
