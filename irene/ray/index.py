"""The index's shard actors: named, detached Ray actors, each running one
:class:`irene.index.actor.IndexActor` (the single writer of one shard's ``DurableIndex``).

The actor restores itself in ``__init__`` (newest valid snapshot + log replay), so when Ray
restarts it after a crash (``max_restarts``) it comes back with every acknowledged batch. It
is a threaded actor: searches run while a batch is being logged, and index copies
(``irene.index.feed``) long-poll ``poll`` in the ``"feed"`` concurrency group (its own
threads, so polls never starve writes or searches).

An index of ``n_owners`` shard actors (``index_actors``) keeps each one's log and snapshots
under ``owner_uri(uri, i, n)``; Ray places them on any node (or where ``resources`` say).
:class:`ActorShards` routes calls over them (``irene.index.router``: partition by id,
scatter-gather, merged top-k arrays). A shard actor that already runs with other settings
than the caller's (``irene.config.IndexConfig``) is an error naming the difference. Ray is
imported lazily, so importing this module does not import it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import numpy as np

from irene.bundle import iter_index_items
from irene.config import IndexConfig
from irene.index.actor import ActorSettings, IndexActor, actor_settings
from irene.index.records import Records
from irene.index.router import RoutedIndex, ShardRouter, owner_name

log = logging.getLogger(__name__)

FEED_GROUP = "feed"  # the actor's concurrency group for index copies' long polls


class SettingsMismatch(RuntimeError):
    """A shard actor runs with other settings than the caller asked for."""


class ShardActor(IndexActor):
    """:class:`IndexActor` as a Ray actor: also seeds itself from a bundle (read here, so
    the vectors never pass through the caller)."""

    def seed_from_bundle(
        self, bundle: str, chunk: int = 4096, owner: int = 0, n_owners: int = 1
    ) -> int:
        """Add the bundle's catalogue items (``irene.bundle.iter_index_items``) that belong
        to this owner if its index is empty, ``chunk`` items per log record at most."""
        if self.count() > 0:
            return 0
        return self.seed(iter_index_items(bundle, chunk), owner, n_owners)


def get_or_create_index_actor(
    name: str,
    namespace: str,
    settings: ActorSettings,
    *,
    max_restarts: int = -1,
    max_task_retries: int = 3,
    feed_concurrency: int = 64,
    env_vars: dict[str, str] | None = None,
):
    """Return the named detached shard actor's handle, creating it with ``settings`` if it
    does not exist (check it with :meth:`ActorShards.verify`).

    ``max_task_retries`` re-sends calls that were in flight when the actor died; that is safe
    because ``add`` is an idempotent upsert. ``env_vars`` (e.g. the S3 endpoint/credentials)
    are set in the actor's process via its runtime environment. ``feed_concurrency``: threads
    for index copies' long polls (one per copy). A detached actor outlives the driver: stop
    it with ``ray.kill(handle)``.
    """
    import ray  # lazily: importing this module must not start or import Ray

    if settings.max_concurrency < 2:
        raise ValueError("max_concurrency must be > 1 so searches run alongside writes")
    options = {
        "name": name,
        "namespace": namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": max_restarts,
        "max_task_retries": max_task_retries,
        "max_concurrency": settings.max_concurrency,
        "num_cpus": settings.num_cpus,
    }
    if env_vars:
        options["runtime_env"] = {"env_vars": dict(env_vars)}
    if settings.resources:
        options["resources"] = dict(settings.resources)
    return (
        ray.remote(concurrency_groups={FEED_GROUP: feed_concurrency})(ShardActor)
        .options(**options)
        .remote(settings)
    )


def index_actors(config: IndexConfig, dim: int, env: dict | None = None, **options) -> list:
    """The handles of ``config``'s shard actors (each created on first use; ``options``:
    more :func:`get_or_create_index_actor` keywords)."""
    n = config.n_owners
    return [
        get_or_create_index_actor(
            owner_name(config.name, i, n), config.namespace, s, env_vars=env or None, **options
        )
        for i, s in enumerate(actor_settings(config, dim))
    ]


def actors_for(config: IndexConfig, dim: int, env: dict | None = None, **options) -> ActorShards:
    """The routed shard actors of ``config`` (the Serve app's ``args.index`` or the
    ingest's ``ingest.index``), with the settings they must run with."""
    handles = index_actors(config, dim, env, **options)
    return ActorShards(handles, actor_settings(config, dim))


def _mismatch(expected: list[ActorSettings], actual: list[ActorSettings]) -> str | None:
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        diff = got.diff(want)
        if diff:
            fields = ", ".join(f"{k}={a!r} (asked for {b!r})" for k, (a, b) in diff.items())
            return (
                f"shard actor {i} of the index at {want.uri!r} already runs with {fields}; "
                "give it the same index settings, or another index name"
            )
    return None


class ActorShards:
    """An index over remote shards: the shard actors, or the ``ShardReader`` deployments
    (``serve_app``; anything whose handles answer the same calls). Each call is scattered
    to the owners concerned and combined (``irene.index.router``); ``search`` answers
    ``(scores, int64 ids)`` arrays, ``lookup`` their string ids and records. :meth:`sync`
    serves synchronous callers (drivers, Ray Data workers)."""

    def __init__(self, handles: list, settings: list[ActorSettings] | None = None) -> None:
        self.handles = list(handles)
        self.router = ShardRouter(len(self.handles))
        self._settings = settings

    @property
    def n_owners(self) -> int:
        return len(self.handles)

    async def _acall(self, method: str, *args):
        plan = getattr(self.router, method)(*args)
        refs = [getattr(self.handles[o], m).remote(*a) for o, m, a in plan.calls]
        return plan.combine(list(await asyncio.gather(*refs)))

    def sync(self, timeout: float | None = None) -> RoutedIndex:
        """The same index for synchronous callers (drivers, Ray Data workers)."""
        import ray

        return RoutedIndex(self.handles, lambda ref: ray.get(ref, timeout=timeout))

    async def verify(self) -> None:
        """Raise :class:`SettingsMismatch` if a shard actor runs with other settings than
        this caller's (e.g. the ingest job started it with another ``n_shards``)."""
        if self._settings is not None:
            got = await asyncio.gather(*(h.get_settings.remote() for h in self.handles))
            self._raise_on_mismatch(list(got))

    def verify_sync(self, timeout: float | None = None) -> None:
        """:meth:`verify` for synchronous callers."""
        import ray

        if self._settings is not None:
            got = ray.get([h.get_settings.remote() for h in self.handles], timeout=timeout)
            self._raise_on_mismatch(list(got))

    def _raise_on_mismatch(self, actual: list[ActorSettings]) -> None:
        problem = _mismatch(self._settings, actual)
        if problem:
            raise SettingsMismatch(problem)

    async def add(self, ids: Sequence[str], vecs, records: Records | None = None) -> int:
        return await self._acall("add", ids, vecs, records)

    async def upsert(
        self, ids: Sequence[str], vecs, records: Records | None = None
    ) -> tuple[int, np.ndarray]:
        """``(seq, created (n,) bool)`` (``ShardRouter.upsert``)."""
        return await self._acall("upsert", ids, vecs, records)

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

    async def search(self, queries, k: int, filter=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores (m, k), int64 ids (m, k))`` over every shard, merged (of the
        items ``filter`` matches)."""
        return await self._acall("search", queries, k, filter)

    async def seal(self, sealed: bool = True) -> list[int]:
        return await self._acall("seal", sealed)

    async def count_where(self, filter=None) -> int:
        return await self._acall("count_where", filter)

    async def scroll(self, after: int, limit: int, filter=None) -> np.ndarray:
        return await self._acall("scroll", after, limit, filter)

    async def delete_where(self, filter) -> int:
        return await self._acall("delete_where", filter)

    async def lookup(self, iids) -> tuple[list, list]:
        """String ids and records of int64 ids (None, None where absent)."""
        return await self._acall("lookup", iids)

    async def count(self) -> int:
        return await self._acall("count")

    async def snapshot(self) -> int:
        return await self._acall("snapshot")

    async def stats(self) -> dict:
        return await self._acall("stats")

    async def seed_from_bundle(self, bundle: str, chunk: int) -> int:
        n = self.n_owners
        refs = [h.seed_from_bundle.remote(bundle, chunk, i, n) for i, h in enumerate(self.handles)]
        return sum(await asyncio.gather(*refs))
