"""Read copies of the index's shards: one shard's follower, and the fan-out over shard readers.

- :class:`ShardCopy`: a :class:`~irene.index.feed.ReadReplica` of one shard actor, kept current
  by a background task that long-polls the actor's change feed and applies what it gets in the
  caller's compute thread (so changes are ordered with the searches of that thread). Used by
  every process that answers queries from a copy: an encoding replica that copies every shard
  (``index.read_replica``), or a ``ShardReader`` replica that copies one (``index.shard_readers``).
- :class:`ShardReaders`: the query side of ``index.shard_readers``: one ``search`` call to one
  replica of each shard's ``ShardReader`` deployment (Serve picks the replica), merged top-k.
  Each replica answers from its copy, or from its shard actor while the copy may be stale, so a
  query that starts after a write was acknowledged sees it (the write waited for every copy).

Hits carry their item's record: ``(id, score, record)`` with record ``{"text", "metadata",
"source", "version"}`` (None when the item is gone by the time it is read), looked up where
the search ran -- in the copy that answered (no Ray call), else in one batched
``get_records`` call to the shard actors (:func:`search_records`) -- never one call per hit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from irene.index.feed import ReadReplica
from irene.index.router import merge_topk

log = logging.getLogger("irene.serve")


def _distinct_ids(hits: list) -> list[str]:
    return list(dict.fromkeys(h[0] for row in hits for h in row))


def _attach(hits: list, ids: list[str], records: list) -> list:
    by_id = dict(zip(ids, records, strict=True))
    return [[(h[0], h[1], by_id[h[0]]) for h in row] for row in hits]


def with_records(hits: list, get_records: Callable[[list[str]], list]) -> list:
    """``[(id, score, record), ...]`` per row of ``[(id, score), ...]`` rows: one
    ``get_records`` call for the distinct ids of the whole batch."""
    ids = _distinct_ids(hits)
    return _attach(hits, ids, get_records(ids) if ids else [])


async def awith_records(hits: list, get_records: Callable[[list[str]], Awaitable]) -> list:
    """:func:`with_records` with an async ``get_records`` (a Ray call)."""
    ids = _distinct_ids(hits)
    return _attach(hits, ids, list(await get_records(ids)) if ids else [])


async def search_records(index, queries: np.ndarray, ks: list[int]) -> list:
    """Top-``ks[i]`` ``(id, score, record)`` of row i of ``queries`` from ``index``: the
    :class:`ShardReaders` (each attaches its own records), or the shard actors
    (:class:`irene.ray.index.ActorShards`: one search call, then one ``get_records`` call
    for the hits kept)."""
    hits = await index.search(queries, max(ks))
    hits = [row[:k] for row, k in zip(hits, ks, strict=True)]
    if isinstance(index, ShardReaders):
        return hits
    return await awith_records(hits, index.get_records)


class ShardCopy:
    """A copy of one shard actor's index that follows the actor's change feed.

    ``handle()`` returns the shard actor's handle (looked up lazily; a restarted actor gets a
    new one); ``pool`` is the thread that searches the copy (changes are applied there too).
    """

    def __init__(self, handle: Callable[[], Any], pool: Executor) -> None:
        self.replica = ReadReplica()
        self._handle = handle
        self._pool = pool
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start (or restart, if it ended) following the feed; needs a running event loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._follow())

    def search(self, queries: np.ndarray, k: int) -> list | None:
        """Top-k ``(id, score)`` per row from the copy (call in ``pool``); None while it may
        be stale."""
        return self.replica.search(queries, k)

    def get_records(self, ids: list[str]) -> list:
        """The records of ``ids`` in the copy (call in ``pool``, right after a search that
        found them: the copy changes in that thread only)."""
        return self.replica.index.get_records(ids)

    async def _follow(self) -> None:
        from irene.ray.index import FEED_GROUP

        loop = asyncio.get_running_loop()
        rep = self.replica
        failures = 0
        while True:
            try:
                timeout = rep.poll_timeout_s()
                ch = await (
                    self._handle()
                    .poll.options(concurrency_group=FEED_GROUP)
                    .remote(*rep.poll_args(), timeout)
                )
                if ch.state is not None or ch.records:  # ordered with searches
                    await loop.run_in_executor(self._pool, rep.apply, ch)
                else:
                    rep.apply(ch)  # a heartbeat: lease and freshness only
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # actor restarting or gone: queries go to the actor meanwhile
                rep.lost_contact()
                failures += 1
                log.warning("read replica %s: poll failed (%s); retrying", rep.name, e)
                await asyncio.sleep(min(2.0, 0.1 * failures))

    async def aclose(self) -> None:
        """Stop following; tell the actor, so its writes stop waiting for this copy."""
        if self._task is None:
            return
        self._task.cancel()
        self._task = None
        try:
            await self._handle().leave.remote(self.replica.name)
        except Exception as e:  # the actor may be gone too; it expels us after the lease
            log.warning("read replica %s: could not leave the feed (%s)", self.replica.name, e)


class ShardReaders:
    """Queries over the ``ShardReader`` deployments (one per shard actor, in owner order):
    each batch goes to one replica of every shard, and the shards' top-k lists are merged."""

    def __init__(self, handles: list) -> None:
        self.handles = list(handles)

    async def search(self, queries: np.ndarray, k: int) -> list:
        """Top-``k`` ``[(id, score, record), ...]`` per row of ``queries`` (n, d)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        parts = await asyncio.gather(*(h.search.remote(q, k) for h in self.handles))
        return parts[0] if len(parts) == 1 else merge_topk(list(parts), k)
