"""The text encoder of one process, micro-batched: ``encode(texts)`` and ``search(texts, k)``.

Used in two places (same code, two placements, ``AppArgs.encoder_placement``):

- ``"deployment"``: inside the ``Encoder`` Serve deployment (its own replicas, e.g. on GPU
  nodes; the Ingress calls it over a Serve handle);
- ``"ingress"``: inside each ``Ingress`` replica, no Serve hop at all. On CPU-only machines
  this is the faster placement (``bench/serve_bench.py``): every hop costs serialisation and
  event-loop time on the same cores that run the model.

Concurrent calls are merged by a :class:`~serve_app.batching.Coalescer` (one compute call at a
time, everything queued meanwhile joins the next). ``search`` encodes all concurrent queries
in one call and searches them together:

- with read replicas (``index.read_replica``, the default): in this process's copy of each
  shard (:class:`irene.index.feed.ReadReplica`, one per shard actor), merged, in the same
  compute call -- no Ray call per query. One background task per shard long-polls its
  actor's change feed and applies the changes in the compute thread, so they are ordered with
  the searches. While a copy is not fresh (starting, or its actor unreachable for a lease)
  the batch goes to the shard actors as below;
- else (or as that fallback): in one ``search`` call to the index (the shard actors, or the
  ``ShardReader`` deployments with ``index.shard_readers``), not part of the batch's compute
  slot, so the next batch encodes while this one's index call is in flight.

Each hit carries its item's record (``(id, score, record)``, see :mod:`serve_app.readers`),
read where the search ran, for the hits each query keeps (its own k, after the merge over
shards): from the copies in the same compute call (no Ray call), else in one batched
``get_records`` call after the index search.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from irene.index.router import ShardRouter, merge_topk, run_plan
from serve_app.batching import Coalescer
from serve_app.readers import ShardCopy, search_records, with_records

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

    ``index`` returns the index (:class:`irene.ray.index.ActorShards`, looked up lazily: the
    actors may not exist yet when this object is built); ``observe(stage, seconds)`` receives the time of each batched
    encode (``batch_encode``), read replica search (``batch_replica_search``) and index actor
    call (``batch_index_search``). ``read_replica``: keep a copy of each shard of the index
    (started by :meth:`start_replica`, or by the first search).
    """

    def __init__(
        self,
        bundle: str,
        max_batch: int,
        threads: int | None = None,
        device: str = "auto",
        index: Callable[[], Any] | None = None,
        observe: Callable[[str, float], None] | None = None,
        read_replica: bool = False,
    ) -> None:
        from irene.bundle import load_encoder

        self._encoder = load_encoder(bundle, device=device)
        self.dim = self._encoder.dim
        self._pool = compute_pool(replica_threads(threads))
        self._index = index
        self._observe = observe or (lambda stage, seconds: None)
        self._texts = Coalescer(self._encode_rows, max_batch)
        self._queries = Coalescer(self._encode_then_search, max_batch)
        self._read_replica = read_replica
        self.copies: list[ShardCopy] = []  # one per shard actor, once following
        log.info("encoder loaded: bundle %s, dim %d", bundle, self.dim)

    async def _encode_rows(self, texts: list) -> np.ndarray:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        emb = await loop.run_in_executor(self._pool, self._encoder.encode, texts)  # (N, d)
        self._observe("batch_encode", time.perf_counter() - t0)
        return emb

    async def _encode_then_search(self, items: list) -> list:
        """items: (text, k) pairs -> one (index call, row) per item; the call's answer is one
        ``[(id, score, record), ...]`` list per item (its own k).

        Runs one batch at a time (Coalescer); the index call is started but not awaited here,
        so the next batch's encode overlaps this batch's index round trip."""
        if self._index is None:
            raise RuntimeError("BatchedEncoder.search needs an index")
        ks = [k for _, k in items]
        self.start_replica()
        loop = asyncio.get_running_loop()
        q, hits, encode_s, search_s = await loop.run_in_executor(
            self._pool, self._encode_search_local, [t for t, _ in items], ks
        )
        self._observe("batch_encode", encode_s)
        if hits is not None:  # answered by the read replica
            self._observe("batch_replica_search", search_s)
            call = loop.create_future()
            call.set_result(hits)
        else:
            call = asyncio.ensure_future(self._index_search(q, ks))
        return [(call, row) for row in range(len(items))]

    def _encode_search_local(self, texts: list, ks: list[int]) -> tuple:
        """In the compute thread: embeddings (N, d), the read replica's hits with their
        records (None without a replica or when the copy may be stale), and the seconds each
        took."""
        t0 = time.perf_counter()
        q = np.asarray(self._encoder.encode(texts), np.float32)  # (N, d)
        t1 = time.perf_counter()
        hits = self._replica_search(q, ks)
        return q, hits, t1 - t0, time.perf_counter() - t1

    def _replica_search(self, q: np.ndarray, ks: list[int]) -> list | None:
        """Top-``ks[i]`` ``(id, score, record)`` of row i, merged over this process's shard
        copies (records read from the copy holding each id); None unless every copy is fresh."""
        if not self.copies:
            return None
        k = max(ks)
        parts = []
        for copy in self.copies:
            hits = copy.search(q, k)
            if hits is None:
                return None
            parts.append(hits)
        hits = parts[0] if len(parts) == 1 else merge_topk(parts, k)
        return with_records([row[:n] for row, n in zip(hits, ks, strict=True)], self._records)

    def _records(self, ids: list[str]) -> list:
        """Records of ``ids`` from the copies that hold them (compute thread; no Ray call)."""
        if len(self.copies) == 1:
            return self.copies[0].get_records(ids)
        return run_plan(ShardRouter(len(self.copies)).get_records(ids), self.copies)

    # ----------------------------------------------------------------- read replica
    def start_replica(self) -> None:
        """Start following each shard actor's change feed (idempotent; needs a running loop)."""
        if not self._read_replica:
            return
        if not self.copies:
            n = len(self._index().handles)
            self.copies = [ShardCopy(self._shard_handle(i), self._pool) for i in range(n)]
        for copy in self.copies:
            copy.start()

    def _shard_handle(self, owner: int) -> Callable[[], Any]:
        return lambda: self._index().handles[owner]

    async def aclose(self) -> None:
        """Stop following; tell the actors, so writes stop waiting for these copies."""
        copies, self.copies = self.copies, []
        for copy in copies:
            await copy.aclose()

    async def _index_search(self, q: np.ndarray, ks: list[int]) -> list:
        t0 = time.perf_counter()
        hits = await search_records(self._index(), q, ks)  # [(id, score, record)] per row
        self._observe("batch_index_search", time.perf_counter() - t0)
        return hits

    async def encode(self, texts: list) -> np.ndarray:
        """(n, d) float32 L2-normalised embeddings of ``texts``."""
        emb = await self._texts.submit(list(texts))
        return np.asarray(emb, np.float32).reshape(-1, self.dim)

    async def search(self, texts: list, k: int) -> list:
        """Top-``k`` ``[(id, score, record), ...]`` per text."""
        return await self.search_pairs([(t, int(k)) for t in texts])

    async def search_pairs(self, pairs: list) -> list:
        """``[(id, score, record), ...]`` per ``(text, k)`` pair (each with its own k)."""
        out = []
        for call, row in await self._queries.submit(list(pairs)):
            out.append((await call)[row])
        return out

    def stats(self) -> dict:
        """Mean items per compute call so far, for encode (ingest) and search (queries)."""
        return {"encode": self._texts.stats(), "search": self._queries.stats()}
