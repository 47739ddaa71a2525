"""The text encoder of one process, micro-batched, and the batched query path over an index
view.

- :class:`BatchedEncoder`: a bundle's encoder plus the replica's compute thread; concurrent
  ``encode`` calls are merged by a :class:`~serve_app.batching.Coalescer` (one compute call at
  a time, everything queued meanwhile joins the next). It only encodes. It runs inside the
  ``Encoder`` deployment (``encoder_placement: deployment``, e.g. on GPU nodes) or inside each
  ``Ingress`` replica (``"ingress"``: no Serve hop, the faster placement on CPU-only machines,
  ``bench/serve_bench.py``).
- :class:`QueryBatcher`: concurrent queries, merged by the same Coalescer class: one encode
  for the batch, one ``search`` of the index view (``irene.index.view``: this replica's
  copies, the shard actors or the shard readers), one ``lookup`` of the distinct hits' string
  ids and records. Scores and ids stay arrays until that lookup. A lone query (no other
  request in flight, the compute thread idle) runs at once in the caller's thread: no thread
  hop (README: Serving speed).
- :class:`ComputeThread`: the one compute thread of a process, and that run-here path.
"""

import asyncio
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from irene.index.filters import Filter
from irene.index.view import CopiesView, IndexView
from serve_app.batching import Coalescer

log = logging.getLogger("irene.serve")

WARM_UP_TEXT = "warm-up"  # encoded once when a BatchedEncoder is made


def replica_threads(requested: int | None) -> int:
    """Threads for torch/faiss: as asked, else the CPUs Ray assigned this replica (>= 1)."""
    if requested:
        return requested
    if os.environ.get("IRENE_NUM_THREADS"):
        return int(os.environ["IRENE_NUM_THREADS"])
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


class ComputeThread(Executor):
    """One compute thread (torch/faiss thread counts set *in* it): what it runs, e.g. the
    index copies' changes and searches, never runs twice at once. :meth:`run_here` runs a call
    in the calling thread instead while the compute thread is idle (no hand-off and wake-up
    of another thread); a lock keeps the two exclusive."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._lock = threading.Lock()
        self._set = threading.local()  # thread counts set in this thread already
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix="irene-compute", initializer=self._set_threads
        )

    def _set_threads(self) -> None:
        from irene.device import set_threads

        set_threads(self.threads)
        self._set.done = True

    def _exclusive(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(*args, **kwargs)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return self._pool.submit(self._exclusive, fn, *args, **kwargs)

    def run_here(self, fn: Callable, *args: Any) -> tuple[bool, Any]:
        """``(True, fn(*args))`` run in this thread, or ``(False, None)`` without running it
        while the compute thread is busy."""
        if not self._lock.acquire(blocking=False):
            return False, None
        try:
            if not getattr(self._set, "done", False):
                self._set_threads()
            return True, fn(*args)
        finally:
            self._lock.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait, cancel_futures=cancel_futures)


class BatchedEncoder:
    """A bundle's encoder plus a compute thread (``pool``); batches concurrent ``encode``
    calls. ``observe(stage, seconds)`` receives the time of each batched encode."""

    def __init__(
        self,
        bundle: str,
        max_batch: int,
        threads: int | None = None,
        device: str = "auto",
        observe: Callable[[str, float], None] | None = None,
        linger_s: float = 0.0,
    ) -> None:
        from irene.bundle import load_encoder

        self._encoder = load_encoder(bundle, device=device)
        self.dim = self._encoder.dim
        self.pool = ComputeThread(replica_threads(threads))
        self._observe = observe or (lambda stage, seconds: None)
        self._texts = Coalescer(self._encode_rows, max_batch, linger_s)
        # a model's first inference is slow (~0.35 s for openvino-bf16 MiniLM: the runtime
        # compiles); pay it here, in the compute thread, before the replica takes requests
        t0 = time.perf_counter()
        self.pool.submit(self._encoder.encode, [WARM_UP_TEXT]).result()
        log.info(
            "encoder loaded: bundle %s, dim %d, first encode %.0f ms",
            bundle,
            self.dim,
            1000 * (time.perf_counter() - t0),
        )

    async def _encode_rows(self, texts: list) -> np.ndarray:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        emb = await loop.run_in_executor(self.pool, self._encoder.encode, texts)  # (N, d)
        self._observe("batch_encode", time.perf_counter() - t0)
        return emb

    def encode_now(self, texts: list) -> np.ndarray:
        """:meth:`encode` without batching, in the calling thread (call it in ``pool``)."""
        return self._encoder.encode(texts)

    async def encode(self, texts: list) -> np.ndarray:
        """(n, d) float32 L2-normalised embeddings of ``texts``."""
        emb = await self._texts.submit(list(texts))
        return np.asarray(emb, np.float32).reshape(-1, self.dim)

    def stats(self) -> dict:
        """Mean texts per compute call so far."""
        return self._texts.stats()


class QueryBatcher:
    """Top-k hits of concurrent ``(text, k)`` queries, batched: ``encode(texts)`` returns
    (n, d) embeddings; ``view`` is the index view searched. Each answer is one
    ``[(id, score, record), ...]`` list per text (hits whose item is gone are dropped).

    ``local``: this replica's :class:`BatchedEncoder` when ``view`` is a
    :class:`~irene.index.view.CopiesView` searched in the same compute thread: a batch is
    then encoded, searched and looked up in *one* compute call (no thread hop in between);
    while a copy may be stale the view's fallback answers as usual. ``alone()`` (with
    ``local``): True while no other request is in flight; a lone query then runs in the
    caller's thread when the compute thread is idle (:meth:`ComputeThread.run_here`)."""

    def __init__(
        self,
        encode: Callable[[list], Awaitable[np.ndarray]],
        view: IndexView,
        max_batch: int,
        observe: Callable[[str, float], None] | None = None,
        local: BatchedEncoder | None = None,
        linger_s: float = 0.0,
        alone: Callable[[], bool] | None = None,
    ) -> None:
        self._encode = encode
        self.view = view
        self._observe = observe or (lambda stage, seconds: None)
        self._local = local if isinstance(view, CopiesView) else None
        here = self._local is not None and alone is not None
        self._queries = Coalescer(
            self._run,
            max_batch,
            linger_s,
            self._run_here if here else None,
            alone if here else None,
        )

    async def search(self, texts: list, k: int, filter: Filter | None = None) -> list:
        """Top-``k`` ``[(id, score, record), ...]`` per text, of the items ``filter``
        matches (``irene.index.filters``)."""
        return await self._queries.submit([(t, int(k), filter) for t in texts])

    def _run_here(self, items: list) -> list | None:
        """``items`` answered in this thread, or None (the compute thread busy, or a copy
        may be stale: then the batched path answers)."""
        if not self.view.fresh():
            return None
        ran, out = self._local.pool.run_here(self._encode_search_now, *_split(items))
        return out[1] if ran else None

    async def _run(self, items: list) -> list:
        texts, ks, groups = _split(items)
        if self._local is not None:
            loop = asyncio.get_running_loop()
            q, hits = await loop.run_in_executor(
                self._local.pool, self._encode_search_now, texts, ks, groups
            )
            if hits is not None:
                return hits
        else:
            q = np.asarray(await self._encode(texts), np.float32)  # (n, d)
        # not searched above (or a copy may be stale): the view decides
        t0 = time.perf_counter()
        parts = await asyncio.gather(
            *(self.view.search(q[rows], max(ks[r] for r in rows), f) for f, rows in groups)
        )
        scores, ids = _scatter(groups, parts, len(texts))  # (n, K), (n, K)
        self._observe("batch_search", time.perf_counter() - t0)
        wanted = _wanted(ids, ks)
        t0 = time.perf_counter()
        looked = await self.view.lookup(wanted) if len(wanted) else ([], [])
        self._observe("batch_lookup", time.perf_counter() - t0)
        return _hits(scores, ids, ks, wanted, looked)

    def _encode_search_now(self, texts: list, ks: list[int], groups: list) -> tuple:
        """In the compute thread (or in place): ``(embeddings, hits per text)`` from the
        copies (hits None while a copy may be stale)."""
        t0 = time.perf_counter()
        q = np.asarray(self._local.encode_now(texts), np.float32)  # (n, d)
        t1 = time.perf_counter()
        self._observe("batch_encode", t1 - t0)
        parts = []
        for f, rows in groups:
            part = self.view.search_now(q[rows], max(ks[r] for r in rows), f)
            if part is None:
                return q, None
            parts.append(part)
        scores, ids = _scatter(groups, parts, len(texts))
        t2 = time.perf_counter()
        self._observe("copies_search", t2 - t1)
        wanted = _wanted(ids, ks)
        looked = self.view.lookup_now(wanted) if len(wanted) else ([], [])
        if looked is None:  # a copy went stale since the search: the view answers
            return q, None
        self._observe("batch_lookup", time.perf_counter() - t2)
        return q, _hits(scores, ids, ks, wanted, looked)

    def stats(self) -> dict:
        """Mean queries per batch so far."""
        return self._queries.stats()


def _split(items: list) -> tuple[list, list[int], list]:
    """Texts, ks and filter groups of ``(text, k, filter)`` items."""
    return [t for t, _, _ in items], [k for _, k, _ in items], _groups([f for _, _, f in items])


def _groups(filters: list) -> list[tuple[Filter | None, np.ndarray]]:
    """Rows that share a filter (the same request's texts, or every unfiltered text)."""
    by: dict[int, tuple[Filter | None, list[int]]] = {}
    for i, f in enumerate(filters):
        by.setdefault(id(f), (f, []))[1].append(i)
    return [(f, np.asarray(rows)) for f, rows in by.values()]


def _scatter(groups: list, parts: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The groups' ``(scores, ids)`` as one (n, K) pair, padded with -inf / -1."""
    if len(parts) == 1 and len(groups[0][1]) == n:
        return parts[0]
    width = max(p[0].shape[1] for p in parts)
    scores = np.full((n, width), -np.inf, dtype=np.float32)
    ids = np.full((n, width), -1, dtype=np.int64)
    for (_, rows), (s, i) in zip(groups, parts, strict=True):
        scores[rows, : s.shape[1]], ids[rows, : i.shape[1]] = s, i
    return scores, ids


def _wanted(ids: np.ndarray, ks: list[int]) -> np.ndarray:
    """The distinct int64 ids among the first ``ks[i]`` hits of each row i."""
    keep = np.arange(ids.shape[1])[None, :] < np.asarray(ks)[:, None]
    return np.unique(ids[keep & (ids >= 0)])


def _hits(scores: np.ndarray, ids: np.ndarray, ks: list[int], wanted, looked) -> list:
    """``[(id, score, record), ...]`` per row (its own k; ids gone meanwhile dropped)."""
    names, records = looked
    found = {int(i): (n, r) for i, n, r in zip(wanted.tolist(), names, records, strict=True)}
    out = []
    for row_s, row_i, k in zip(scores.tolist(), ids.tolist(), ks, strict=True):
        hits = []
        for s, i in zip(row_s[:k], row_i[:k], strict=True):
            name, rec = found.get(i, (None, None))
            if name is not None:
                hits.append((name, s, rec))
        out.append(hits)
    return out
