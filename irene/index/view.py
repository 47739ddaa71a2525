"""The read path: one interface over every place an index can be searched.

An *index view* answers two calls, arrays in and out::

    await view.search(queries (m, d) float32, k, filter=None)
        -> (scores (m, k) float32, ids (m, k) int64)          # filter: irene.index.filters
    await view.lookup(ids (n,) int64)            -> (string ids, records)   # None where gone

Three placements implement it:

- :class:`CopiesView`: this process's copies of the shards (``irene.index.feed.IndexCopy``),
  searched in one compute thread, no Ray call; while any copy may be stale it asks its
  ``fallback`` view instead -- **the one place the staleness rule is applied**;
- ``irene.ray.index.ActorShards`` over the shard actors (scatter, gather, merged top-k);
- the same ``ActorShards`` over the ``ShardReader`` deployments' handles (each a
  ``CopiesView`` of one shard with its shard actor as fallback).

Callers keep int64 ids and scores as arrays; string ids and records are looked up once per
batch, for the hits kept, where the answer leaves the system (the HTTP edge).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Protocol

import numpy as np

from irene.index.feed import IndexCopy
from irene.index.filters import Filter
from irene.index.router import ShardRouter, run_plan
from irene.index.topk import merge_topk


class IndexView(Protocol):
    async def search(
        self, queries: np.ndarray, k: int, filter: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    async def lookup(self, ids: np.ndarray) -> tuple[list, list]: ...


class CopiesView:
    """Copies of every shard of an index (``copies[i]`` follows shard actor ``i``), searched
    and read in ``pool`` (the thread that also applies their changes; ``*_now`` may also run
    in a caller that holds it exclusively); ``fallback`` answers while any copy may be stale
    (starting, or out of contact for a lease)."""

    def __init__(
        self,
        copies: Sequence[IndexCopy],
        pool: Executor,
        fallback: IndexView,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``observe(stage, seconds)`` gets each search's time as ``copies_search`` or
        ``fallback_search``."""
        self.copies = list(copies)
        self.router = ShardRouter(len(self.copies))
        self._pool = pool
        self._fallback = fallback
        self._observe = observe or (lambda stage, seconds: None)
        self.answered = {"copies": 0, "fallback": 0}  # searches, by who answered

    def fresh(self) -> bool:
        return bool(self.copies) and all(c.fresh() for c in self.copies)

    def search_now(
        self, queries: np.ndarray, k: int, filter: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """In ``pool``: the merged top-k of the copies, or None while any may be stale."""
        if not self.fresh():
            return None
        parts = [c.index.search(queries, k, filter) for c in self.copies]
        self.answered["copies"] += 1
        return merge_topk(parts, k)

    def lookup_now(self, ids: np.ndarray) -> tuple[list, list] | None:
        """In ``pool``: string ids and records from the copies, or None while stale."""
        if not self.fresh():
            return None
        return run_plan(self.router.lookup(ids), [c.index for c in self.copies])

    async def search(
        self, queries: np.ndarray, k: int, filter: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        out = await loop.run_in_executor(self._pool, self.search_now, q, int(k), filter)
        if out is None:
            self.answered["fallback"] += 1
            out = await self._fallback.search(q, int(k), filter)
            self._observe("fallback_search", time.perf_counter() - t0)
            return out
        self._observe("copies_search", time.perf_counter() - t0)
        return out

    async def lookup(self, ids: np.ndarray) -> tuple[list, list]:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._pool, self.lookup_now, ids)
        if out is None:
            return await self._fallback.lookup(ids)
        return out
