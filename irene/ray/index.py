"""The index actors: Ray actors each owning one shard's ``DurableIndex`` (its single writer).

``IndexActor`` is a plain class (usable and testable without Ray); ``get_or_create_index_actor``
wraps it with ``ray.remote`` as a *named, detached* actor in an explicit namespace. The actor
restores itself in ``__init__`` (newest valid snapshot + log replay), so when Ray restarts it
after a crash (``max_restarts``) it comes back with every acknowledged batch. With
``max_concurrency > 1`` it is a threaded actor: searches run while a batch is being logged.

Read replicas (``irene.index.feed``) long-poll ``poll`` in the ``"feed"`` concurrency group
(its own threads, so polls never starve writes or searches); ``add``/``delete`` return only
once every replica has applied the batch or been expelled.

An index of ``n_owners`` shards is ``n_owners`` such actors (``index_actors``), each with its
own log and snapshots under ``owner_uri(uri, i, n)`` and placed by Ray on any node;
:class:`ActorShards` routes calls over them (``irene.index.router``: partition by id,
scatter-gather top-k). With one owner the actor's name and uri are the index's own.

Ray is imported lazily, so ``irene.index`` stays importable without it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import numpy as np

from irene.index.feed import ChangeFeed, Changes
from irene.index.log import DurableIndex
from irene.index.records import Records, as_records
from irene.index.router import RoutedIndex, ShardRouter, owner_name, owner_of, owner_uri
from irene.index.shard import IndexSpec
from irene.index.sharded import int_id

log = logging.getLogger(__name__)

FEED_GROUP = "feed"  # the actor's concurrency group for read replicas' long polls


class IndexActor:
    """Holds one ``DurableIndex`` at ``uri`` (a local directory or ``s3://`` prefix)."""

    def __init__(
        self,
        uri: str,
        dim: int,
        n_shards: int = 4,
        spec: IndexSpec | dict | None = None,
        snapshot_every: int = 1000,
        keep_snapshots: int = 2,
        lease_s: float = 1.5,
    ) -> None:
        t0 = time.perf_counter()
        self.uri = uri
        self._index = DurableIndex.open(
            uri,
            dim,
            IndexSpec.from_dict(spec),
            n_shards,
            snapshot_every=snapshot_every,
            keep_snapshots=keep_snapshots,
        )
        self._restore_s = time.perf_counter() - t0
        self._started = time.time()
        self._feed = ChangeFeed(self._index.export_state, self._index.last_seq, lease_s)
        self._index.add_listener(self._feed.publish)

    def add(self, ids: Sequence[str], vecs, records: Records | None = None) -> int:
        """Upsert a batch with its records (None: no records; see ``ShardedIndex.add``),
        durable, and applied by every read replica, on return; returns its log sequence
        number."""
        seq = self._index.add(list(ids), np.asarray(vecs, dtype=np.float32), as_records(records))
        self._feed.wait_followers(seq)
        return seq

    def delete(self, ids: Sequence[str]) -> list[bool]:
        present = self._index.delete(list(ids))
        self._feed.wait_followers(self._index.last_seq)
        return present

    def poll(self, follower: str, epoch: str | None, since: int, timeout_s: float) -> Changes:
        """A read replica's long poll (``ChangeFeed.poll``); call it in the "feed" group."""
        return self._feed.poll(follower, epoch, since, timeout_s)

    def contains(self, ids: Sequence[str]) -> list[bool]:
        """Whether each id is in the index now (one call per batch)."""
        return self._index.contains(list(ids))

    def get(self, id_: str) -> np.ndarray | None:
        return self._index.get(id_)

    def get_many(self, ids: Sequence[str]) -> list[np.ndarray | None]:
        """The stored vector of each id (None where absent), in one call."""
        return [self._index.get(i) for i in ids]

    def get_records(self, ids: Sequence[str]) -> list[dict | None]:
        """The record of each id (``{"text", "metadata", "source", "version"}``, None where
        absent), in one call."""
        return self._index.get_records(list(ids))

    def seed_from_bundle(
        self, bundle: str, chunk: int = 4096, owner: int = 0, n_owners: int = 1
    ) -> int:
        """Add a bundle's catalogue items (``irene.bundle.iter_index_items``: vectors and
        records) that belong to this owner if its index is empty, through the durable path,
        ``chunk`` items per log record at most; returns the number added (0 when the index
        already held items)."""
        from irene.bundle import iter_index_items

        if self._index.count > 0:
            return 0
        t0 = time.perf_counter()
        added = 0
        for ids, vecs, records in iter_index_items(bundle, chunk):  # (n,), (n, d), n rows
            if n_owners > 1:
                mine = [i for i, s in enumerate(ids) if owner_of(int_id(s), n_owners) == owner]
                ids, vecs, records = [ids[i] for i in mine], vecs[mine], records.take(mine)
            if ids:
                self.add(ids, vecs, records)
                added += len(ids)
        log.info(
            "seeded %s with %d bundle items in %.1fs", self.uri, added, time.perf_counter() - t0
        )
        return added

    def search(self, queries, k: int) -> list[list[tuple[str, float]]]:
        return self._index.search(np.asarray(queries, dtype=np.float32), k)

    def leave(self, follower: str) -> None:
        """A read replica shutting down: writes stop waiting for it."""
        self._feed.leave(follower)

    def count(self) -> int:
        return self._index.count

    def snapshot(self) -> int:
        return self._index.snapshot()

    def stats(self) -> dict:
        return {
            "uri": self.uri,
            "dim": self._index.index.dim,
            "count": self._index.count,
            "integrity": self._index.index.integrity(),
            "records": self._index.index.record_stats(),
            "n_shards": self._index.index.n_shards,
            "kind": self._index.index.spec.kind,
            "last_seq": self._index.last_seq,
            "snapshot_seq": self._index.snapshot_seq,
            "recovery_report": self._index.recovery_report.to_dict(),
            "restore_s": self._restore_s,
            "started_at": self._started,
            "pid": os.getpid(),
            "feed": self._feed.stats(),
        }

    def close(self) -> None:
        self._index.close()


def get_or_create_index_actor(
    name: str,
    namespace: str,
    uri: str,
    dim: int,
    n_shards: int = 4,
    spec: IndexSpec | dict | None = None,
    *,
    max_restarts: int = -1,
    max_task_retries: int = 3,
    max_concurrency: int = 8,
    num_cpus: float = 1.0,
    snapshot_every: int = 1000,
    keep_snapshots: int = 2,
    lease_s: float = 1.5,
    feed_concurrency: int = 64,
    env_vars: dict[str, str] | None = None,
    resources: dict[str, float] | None = None,
):
    """Return the named detached ``IndexActor`` handle, creating it if it does not exist.

    ``max_task_retries`` re-sends calls that were in flight when the actor died; that is safe
    because ``add`` is an idempotent upsert. ``env_vars`` (e.g. the S3 endpoint/credentials)
    are set in the actor's process via its runtime environment. ``lease_s``: read replicas'
    lease (``irene.index.feed``); ``feed_concurrency``: threads for their long polls (one
    per replica); ``resources``: custom Ray resources, e.g. ``{"index_shard": 1}`` to place
    shard actors on the cluster's memory-heavy index nodes. A detached actor outlives
    the driver: stop it with ``ray.kill(handle)``.
    """
    import ray

    if max_concurrency < 2:
        raise ValueError("max_concurrency must be > 1 so searches run alongside writes")
    options = {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": max_restarts,
        "max_task_retries": max_task_retries,
        "max_concurrency": max_concurrency,
        "num_cpus": num_cpus,
    }
    if env_vars:
        options["runtime_env"] = {"env_vars": dict(env_vars)}
    if resources:
        options["resources"] = dict(resources)
    spec_dict = IndexSpec.from_dict(spec).to_dict()
    return (
        ray.remote(concurrency_groups={FEED_GROUP: feed_concurrency})(IndexActor)
        .options(**options)
        .remote(uri, dim, n_shards, spec_dict, snapshot_every, keep_snapshots, lease_s)
    )


def index_actors(
    name: str, namespace: str, uri: str, dim: int, n_owners: int = 1, **kwargs
) -> list:
    """The handles of the ``n_owners`` shard actors of one index (each created on first use,
    see :func:`get_or_create_index_actor` for ``kwargs``)."""
    return [
        get_or_create_index_actor(
            owner_name(name, i, n_owners), namespace, owner_uri(uri, i, n_owners), dim, **kwargs
        )
        for i in range(n_owners)
    ]


def actors_for(settings, uri: str, dim: int, env: dict | None = None, **options) -> ActorShards:
    """The routed shard actors described by ``settings`` (any object with the fields of
    ``irene.config.IndexConfig``: the Serve app's ``args.index`` or the ingest's
    ``ingest.index``); ``options``: more :func:`get_or_create_index_actor` keywords."""
    handles = index_actors(
        settings.name,
        settings.namespace,
        uri,
        dim,
        settings.n_owners,
        n_shards=settings.n_shards,
        spec=settings.spec or None,
        max_restarts=-1,
        num_cpus=settings.num_cpus,
        snapshot_every=settings.snapshot_every,
        env_vars=env or None,
        resources=settings.resources or None,
        **options,
    )
    return ActorShards(handles)


class ActorShards:
    """The index over its shard actors: each ``IndexActor`` method as an ``async`` method
    (scatter to the owners concerned, gather, combine: ``irene.index.router``), plus
    :meth:`call` for synchronous callers (drivers, Ray Data workers)."""

    def __init__(self, handles: list) -> None:
        self.handles = list(handles)
        self.router = ShardRouter(len(self.handles))

    @property
    def n_owners(self) -> int:
        return len(self.handles)

    def _refs(self, method: str, args: tuple):
        plan = getattr(self.router, method)(*args)
        return plan, [getattr(self.handles[o], m).remote(*a) for o, m, a in plan.calls]

    async def _acall(self, method: str, *args):
        import asyncio

        plan, refs = self._refs(method, args)
        return plan.combine(list(await asyncio.gather(*refs)))

    def call(self, method: str, *args, timeout: float | None = None):
        """Run one router method synchronously (``ray.get`` on every owner's answer)."""
        return getattr(self.sync(timeout), method)(*args)

    def sync(self, timeout: float | None = None) -> RoutedIndex:
        """The same index for synchronous callers (drivers, Ray Data workers)."""
        import ray

        return RoutedIndex(self.handles, lambda ref: ray.get(ref, timeout=timeout))

    async def add(self, ids: Sequence[str], vecs, records: Records | None = None) -> int:
        return await self._acall("add", ids, vecs, records)

    async def delete(self, ids: Sequence[str]) -> list[bool]:
        return await self._acall("delete", ids)

    async def contains(self, ids: Sequence[str]) -> list[bool]:
        return await self._acall("contains", ids)

    async def get(self, id_: str):
        return await self._acall("get", id_)

    async def get_many(self, ids: Sequence[str]) -> list:
        return await self._acall("get_many", ids)

    async def get_records(self, ids: Sequence[str]) -> list[dict | None]:
        return await self._acall("get_records", ids)

    async def search(self, queries, k: int) -> list:
        return await self._acall("search", queries, k)

    async def count(self) -> int:
        return await self._acall("count")

    async def snapshot(self) -> int:
        return await self._acall("snapshot")

    async def stats(self) -> dict:
        return await self._acall("stats")

    async def seed_from_bundle(self, bundle: str, chunk: int) -> int:
        import asyncio

        n = self.n_owners
        refs = [h.seed_from_bundle.remote(bundle, chunk, i, n) for i, h in enumerate(self.handles)]
        return sum(await asyncio.gather(*refs))
