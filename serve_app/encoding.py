"""The text encoder of one process, micro-batched: ``encode(texts)`` and ``search(texts, k)``.

Used in two places (same code, two placements, ``AppArgs.encoder_placement``):

- ``"deployment"``: inside the ``Encoder`` Serve deployment (its own replicas, e.g. on GPU
  nodes; the Ingress calls it over a Serve handle);
- ``"ingress"``: inside each ``Ingress`` replica, no Serve hop at all. On CPU-only machines
  this is the faster placement (``bench/serve_bench.py``): every hop costs serialisation and
  event-loop time on the same cores that run the model.

Concurrent calls are merged by a :class:`~serve_app.batching.Coalescer` (one compute call at a
time, everything queued meanwhile joins the next). ``search`` encodes all concurrent queries
in one call and sends them to the index actor in one ``search`` call; that call is not part of
the batch's compute slot, so the next batch encodes while this one's index call is in flight.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serve_app.batching import Coalescer

log = logging.getLogger("irene.serve")


def replica_threads(requested: int | None) -> int:
    """Threads for torch/faiss: as asked, else the CPUs Ray assigned this replica (>= 1)."""
    if requested:
        return requested
    if os.environ.get("IRENE_NUM_THREADS"):
        return int(os.environ["IRENE_NUM_THREADS"])
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def compute_pool(threads: int) -> ThreadPoolExecutor:
    """One compute thread; torch/faiss thread counts are set *in* that thread."""
    from irene.device import set_threads

    return ThreadPoolExecutor(
        1, thread_name_prefix="irene-compute", initializer=set_threads, initargs=(threads,)
    )


class BatchedEncoder:
    """A bundle's encoder plus a compute thread; batches concurrent ``encode``/``search`` calls.

    ``index`` returns the index actor handle (looked up lazily: the actor may not exist yet
    when this object is built); ``observe(stage, seconds)`` receives the time of each batched
    compute call (``batch_encode``) and index call (``batch_index_search``).
    """

    def __init__(
        self,
        bundle: str,
        max_batch: int,
        threads: int | None = None,
        device: str = "auto",
        index: Callable[[], Any] | None = None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        from irene.bundle import load_encoder

        self._encoder = load_encoder(bundle, device=device)
        self.dim = self._encoder.dim
        self._pool = compute_pool(replica_threads(threads))
        self._index = index
        self._observe = observe or (lambda stage, seconds: None)
        self._texts = Coalescer(self._encode_rows, max_batch)
        self._queries = Coalescer(self._encode_then_search, max_batch)
        log.info("encoder loaded: bundle %s, dim %d", bundle, self.dim)

    async def _encode_rows(self, texts: list) -> np.ndarray:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        emb = await loop.run_in_executor(self._pool, self._encoder.encode, texts)  # (N, d)
        self._observe("batch_encode", time.perf_counter() - t0)
        return emb

    async def _encode_then_search(self, items: list) -> list:
        """items: (text, k) pairs -> one (index call, row, k) per item.

        Runs one batch at a time (Coalescer); the index call is started but not awaited here,
        so the next batch's encode overlaps this batch's index round trip."""
        if self._index is None:
            raise RuntimeError("BatchedEncoder.search needs an index")
        q = await self._encode_rows([t for t, _ in items])  # (N, d)
        call = asyncio.ensure_future(self._index_search(q, max(k for _, k in items)))
        return [(call, row, k) for row, (_, k) in enumerate(items)]

    async def _index_search(self, q: np.ndarray, k: int) -> list:
        t0 = time.perf_counter()
        hits = await self._index().search.remote(q, k)  # one [(id, score), ...] per row of q
        self._observe("batch_index_search", time.perf_counter() - t0)
        return hits

    async def encode(self, texts: list) -> np.ndarray:
        """(n, d) float32 L2-normalised embeddings of ``texts``."""
        emb = await self._texts.submit(list(texts))
        return np.asarray(emb, np.float32).reshape(-1, self.dim)

    async def search(self, texts: list, k: int) -> list:
        """Top-``k`` ``[(id, score), ...]`` per text."""
        return await self.search_pairs([(t, int(k)) for t in texts])

    async def search_pairs(self, pairs: list) -> list:
        """``[(id, score), ...]`` per ``(text, k)`` pair (each with its own k)."""
        out = []
        for call, row, k in await self._queries.submit(list(pairs)):
            out.append((await call)[row][:k])
        return out

    def stats(self) -> dict:
        """Mean items per compute call so far, for encode (ingest) and search (queries)."""
        return {"encode": self._texts.stats(), "search": self._queries.stats()}
