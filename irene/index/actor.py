"""The plain-Python core of a shard actor: one ``DurableIndex`` (its single writer), its
change feed for index copies, and the calls the routers make.

``irene.ray.index`` runs it as a named, detached Ray actor (threaded: searches run while a
batch is being logged); tests and in-process tools use it directly. ``add``/``upsert``/
``delete`` return only once every index copy following the feed has applied the batch or
been expelled (``irene.index.feed``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from irene import io as iio
from irene.config import IndexConfig
from irene.index.feed import ChangeFeed, Changes
from irene.index.filters import Filter, as_filter
from irene.index.log import DurableIndex
from irene.index.records import Records, as_records
from irene.index.router import owner_of, owner_uri
from irene.index.shard import IndexSpec
from irene.index.sharded import int_id
from irene.procmem import process_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorSettings:
    """What a shard actor is started with; a caller that finds the actor running with other
    settings gets an error naming the difference (``irene.ray.index``)."""

    uri: str
    dim: int
    n_shards: int = 4
    spec: dict = field(default_factory=dict)
    snapshot_every: int = 1000
    keep_snapshots: int = 2
    lease_s: float = 1.5
    # where and how Ray runs it (the core ignores these)
    num_cpus: float = 0.5
    resources: dict = field(default_factory=dict)
    max_concurrency: int = 8

    def diff(self, other: ActorSettings) -> dict[str, tuple]:
        """``{field: (self's, other's)}`` for every field that differs."""
        a, b = asdict(self), asdict(other)
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def actor_settings(config: IndexConfig, dim: int) -> list[ActorSettings]:
    """The settings of each of ``config``'s shard actors, in owner order."""
    n = config.n_owners
    base = ActorSettings(
        uri=config.uri,
        dim=int(dim),
        n_shards=config.n_shards,
        spec=dict(config.spec),
        snapshot_every=config.snapshot_every,
        keep_snapshots=config.keep_snapshots,
        lease_s=config.lease_s,
        num_cpus=config.num_cpus,
        resources=dict(config.resources),
        max_concurrency=config.max_concurrency,
    )
    return [replace(base, uri=owner_uri(config.uri, i, n)) for i in range(n)]


class GenerationSealed(RuntimeError):
    """A write to a sealed index generation (another generation now takes the writes)."""


SEALED_MARKER = "SEALED"


class IndexActor:
    """Holds one ``DurableIndex`` at ``settings.uri`` (a local directory or ``s3://`` prefix).

    A *sealed* actor (``seal(True)``: its generation is being replaced, see
    ``irene.index.generations``) refuses every write with :class:`GenerationSealed` and keeps
    answering reads; the seal is a marker file beside the log, so it survives restarts."""

    def __init__(self, settings: ActorSettings) -> None:
        t0 = time.perf_counter()
        self.settings = settings
        self.uri = settings.uri
        self._index = DurableIndex.open(
            settings.uri,
            settings.dim,
            IndexSpec.from_dict(settings.spec),
            settings.n_shards,
            snapshot_every=settings.snapshot_every,
            keep_snapshots=settings.keep_snapshots,
        )
        self._restore_s = time.perf_counter() - t0
        self._started = time.time()
        self._feed = ChangeFeed(self._index.export_state, self._index.last_seq, settings.lease_s)
        self._index.add_listener(self._feed.publish)
        self._sealed = iio.exists(iio.join(self.uri, SEALED_MARKER))
        self._index.write_guard = self._writable  # checked under the log's write lock

    def seal(self, sealed: bool = True) -> int:
        """Refuse (True) or accept again (False) writes; returns the last log seq (final once
        sealed: nothing is written after it)."""
        marker = iio.join(self.uri, SEALED_MARKER)
        if sealed:
            iio.write_text(marker, "sealed\n")
        elif iio.exists(marker):
            iio.delete(marker)
        self._sealed = sealed
        with self._index._write_lock:  # a write already past the check finishes first
            return self._index.last_seq

    @property
    def sealed(self) -> bool:
        return self._sealed

    def _writable(self) -> None:
        if self._sealed:
            raise GenerationSealed(f"index generation at {self.uri} is sealed (being replaced)")

    @classmethod
    def open(
        cls, uri: str, dim: int, n_shards: int = 4, spec: dict | None = None, **kw
    ) -> IndexActor:
        """An actor over ``uri`` (in-process use: tests, tools); ``kw``: more settings."""
        return cls(ActorSettings(uri, int(dim), n_shards, dict(spec or {}), **kw))

    def get_settings(self) -> ActorSettings:
        return self.settings

    # ----------------------------------------------------------------- writes
    def add(self, ids: Sequence[str], vecs, records: Records | None = None) -> int:
        """Upsert a batch with its records (None: no records; see ``ShardedIndex.add``),
        durable, and applied by every index copy, on return; returns its log sequence
        number."""
        return self.upsert(ids, vecs, records)[0]

    def upsert(
        self, ids: Sequence[str], vecs, records: Records | None = None
    ) -> tuple[int, np.ndarray]:
        """:meth:`add`, returning ``(seq, created (n,) bool)``."""
        seq, created = self._index.upsert(
            list(ids), np.asarray(vecs, dtype=np.float32), as_records(records)
        )
        self._feed.wait_followers(seq)
        return seq, created

    def delete(self, ids: Sequence[str]) -> list[bool]:
        present = self._index.delete(list(ids))
        self._feed.wait_followers(self._index.last_seq)
        return present

    def delete_where(self, filter: Filter | dict) -> int:
        """Remove the items ``filter`` matches; returns how many (durable on return)."""
        n = self._index.delete_where(as_filter(filter))
        self._feed.wait_followers(self._index.last_seq)
        return n

    def seed(self, batches: Iterable[tuple], owner: int = 0, n_owners: int = 1) -> int:
        """Add the ``(ids, vecs, records)`` batches' items that belong to this owner if the
        index is empty, one log record per batch; returns the number added (0 when the
        index already held items)."""
        if self._index.count > 0:
            return 0
        t0 = time.perf_counter()
        added = 0
        for ids, vecs, records in batches:  # (n,), (n, d), n rows
            if n_owners > 1:
                mine = [i for i, s in enumerate(ids) if owner_of(int_id(s), n_owners) == owner]
                ids, vecs, records = [ids[i] for i in mine], vecs[mine], records.take(mine)
            if ids:
                self.add(ids, vecs, records)
                added += len(ids)
        log.info("seeded %s with %d items in %.1fs", self.uri, added, time.perf_counter() - t0)
        return added

    # ----------------------------------------------------------------- copies
    def poll(self, follower: str, epoch: str | None, since: int, timeout_s: float) -> Changes:
        """An index copy's long poll (``ChangeFeed.poll``)."""
        return self._feed.poll(follower, epoch, since, timeout_s)

    def leave(self, follower: str) -> None:
        """An index copy going away: writes stop waiting for it."""
        self._feed.leave(follower)

    # ----------------------------------------------------------------- reads
    def search(
        self, queries, k: int, filter: Filter | dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores (m, k), int64 ids (m, k))`` (``irene.index.topk``) of the items
        ``filter`` matches (``irene.index.filters``; None: all)."""
        return self._index.search(np.asarray(queries, dtype=np.float32), k, as_filter(filter))

    def count_where(self, filter: Filter | dict | None = None) -> int:
        return self._index.index.count_where(as_filter(filter))

    def scroll(self, after: int, limit: int, filter: Filter | dict | None = None) -> np.ndarray:
        """The next ``limit`` int64 ids above ``after`` (``ShardedIndex.scroll``)."""
        return self._index.index.scroll(after, limit, as_filter(filter))

    def lookup(self, iids) -> tuple[list, list]:
        """String ids and records of int64 ids (None, None where absent)."""
        return self._index.lookup(iids)

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

    def count(self) -> int:
        return self._index.count

    def snapshot(self) -> int:
        return self._index.snapshot()

    def set_search_knobs(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Search knobs of every FAISS shard, in place until a restart (a sweep's tool)."""
        self._index.index.set_search_knobs(nprobe=nprobe, ef_search=ef_search)

    def memory(self) -> dict:
        """``ShardedIndex.memory()`` plus this process's ``rss``, ``peak_rss`` and
        ``private`` bytes (``irene.procmem``)."""
        return {**self._index.index.memory(), **process_memory()}

    def stats(self) -> dict:
        return {
            "uri": self.uri,
            "sealed": self._sealed,
            "dim": self._index.index.dim,
            "count": self._index.count,
            "integrity": self._index.index.integrity(),
            "records": self._index.index.record_stats(),
            "versions": self._index.index.version_counts(),
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
