"""A hash-partitioned set of ``Shard``s keyed by string ids, safe for concurrent search + writes.

String ids map to stable int64 ids: the first 8 bytes of ``blake2b(id.encode("utf-8"))``
read little-endian and masked to 63 bits (so never negative and never FAISS's ``-1``
padding). The shard of an id is ``int_id % n_shards``. Both are stable across processes and
Python versions (unlike ``hash()``). A 63-bit collision between two different strings is
detected and raised as ``IdCollisionError`` instead of silently overwriting.

The string ids, and the record each id may carry (text, metadata, source, bundle version:
``irene.index.records``), are held column-wise in a ``RecordStore`` beside the shards and
saved with them: it is the index's map from int64 ids to string ids.

Concurrency: a writer-preferring readers-writer lock. ``search``/``get``/``get_records``/
``count``/``state_dict`` take the read side (any number at once); ``add``/``delete``/
``load_state_dict`` take the write side. A search therefore sees each write batch (vectors
and records) either entirely or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from irene.index.cache import VersionedLRU
from irene.index.filters import Filter, as_filter
from irene.index.records import Records, RecordStore, as_records, pack_strings
from irene.index.shard import IndexSpec, Shard, as_vectors
from irene.index.topk import merge_topk, named

_MASK63 = (1 << 63) - 1
# 3: string ids inside the records, shards' arrays side by side; 2 (records beside an id list,
# a blob per shard) and 1 (no records) still load
_STATE_VERSION = 3
_RECORD_ARRAYS = ("ids", "text_off", "text", "meta_off", "meta", "source", "version")
_NAME_ARRAYS = ("name_off", "name")
# Below this many (stored vectors x queries) per shard a search runs the shards one after
# another: a thread hand-off per shard costs more than such a search (README: serving).
PARALLEL_MIN_WORK = 200_000


class IdCollisionError(ValueError):
    """Two different string ids hash to the same int64 id."""


def int_id(s: str) -> int:
    """Stable non-negative int64 id of a string id."""
    digest = hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def int_ids(ids: Sequence[str]) -> np.ndarray:
    """``int_id`` of each string id, (n,) int64."""
    return np.fromiter((int_id(s) for s in ids), dtype=np.int64, count=len(ids))


class RWLock:
    """Writer-preferring readers-writer lock (not re-entrant)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def check_str_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of strings, not a single string")
    out = list(ids)
    for s in out:
        if not isinstance(s, str) or not s:
            raise TypeError(f"ids must be non-empty strings, got {s!r}")
    return out


class ShardedIndex:
    """``n_shards`` FAISS shards behind string ids; inner-product top-k search merged across shards."""

    def __init__(
        self,
        dim: int,
        n_shards: int = 4,
        spec: IndexSpec | None = None,
        search_threads: int | None = None,
    ) -> None:
        if n_shards < 1:
            raise ValueError("n_shards must be >= 1")
        self.dim = int(dim)
        self.n_shards = int(n_shards)
        self.spec = spec or IndexSpec()
        self._shards = [Shard(self.dim, self.spec) for _ in range(self.n_shards)]
        self._records = RecordStore()  # string id and record of every stored id
        self._lock = RWLock()
        self._version = 0  # bumped by every write: cached filter matches die with it
        self._matches = VersionedLRU(self.spec.filter_cache_mb << 20)
        self._search_threads = search_threads or min(self.n_shards, 8)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # ----------------------------------------------------------------- ids
    def shard_of(self, iid: int) -> int:
        return iid % self.n_shards

    @property
    def count(self) -> int:
        return len(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, id_: str) -> bool:
        return self.contains([id_])[0]

    def ids(self) -> list[str]:
        with self._lock.read():
            return self._records.all_names()

    def integrity(self) -> dict[str, int]:
        """Counts that agree when no id is stored twice: string ids, shard labels, and FAISS
        vectors minus tombstones (``stored - tombstones == labels == ids``)."""
        with self._lock.read():
            return {
                "ids": len(self._records),
                "labels": sum(s.count for s in self._shards),
                "stored": sum(s.n_stored for s in self._shards),
                "tombstones": sum(s.n_tombstones for s in self._shards),
            }

    def prepare_upsert(self, ids: Sequence[str], vecs) -> tuple[list[str], np.ndarray]:
        """``prepare_batch`` without records: (ids, vecs (n, dim) float32)."""
        ids, x, _ = self.prepare_batch(ids, vecs)
        return ids, x

    def prepare_batch(
        self, ids: Sequence[str], vecs, records: Records | None = None
    ) -> tuple[list[str], np.ndarray, Records | None]:
        """Validate a batch; returns (ids, vecs (n, dim) float32, records) with duplicates
        resolved (the last occurrence of an id wins, for its record too). Raises on bad
        shapes, non-finite values, bad records and hash collisions, so a caller (e.g. a
        write-ahead log) can validate before committing; ``add_prepared`` takes the result."""
        ids = check_str_ids(ids)
        x = as_vectors(vecs, self.dim)  # (n, dim)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids but {len(x)} vectors")
        records = as_records(records)  # validated when it was built (Records)
        if records is not None and len(records) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(records)} records")
        last = {s: i for i, s in enumerate(ids)}
        if len(last) != len(ids):
            keep = sorted(last.values())
            ids, x = [ids[i] for i in keep], x[keep]
            records = None if records is None else records.take(keep)
        iids = int_ids(ids)
        with self._lock.read():
            self._check_collisions(ids, iids)
        return ids, x, records

    def _check_collisions(self, ids: list[str], iids: np.ndarray) -> list[str | None]:
        """Raise ``IdCollisionError`` if two of ``ids`` or one of them and a stored id share
        an int64 id; returns the stored string id of each (None: not stored)."""
        stored = self._records.names(iids)
        seen: dict[int, str] = {}
        for s, iid, other in zip(ids, iids.tolist(), stored, strict=True):
            other = seen.get(iid) or other
            if other is not None and other != s:
                raise IdCollisionError(f"ids {s!r} and {other!r} collide on int64 id {iid}")
            seen[iid] = s
        return stored

    # ----------------------------------------------------------------- writes
    def add(self, ids: Sequence[str], vecs, records: Records | None = None) -> None:
        """Upsert a batch: ids (n,) strings, vecs (n, dim), records (n rows) or None (the ids
        keep no record: they read as ``empty_record()``). Existing ids are replaced, records
        included."""
        self.add_prepared(*self.prepare_batch(ids, vecs, records))

    def add_prepared(self, ids: list[str], x: np.ndarray, records: Records | None) -> np.ndarray:
        """Upsert what ``prepare_batch`` returned (or a logged batch): unique ids, vectors
        (n, dim) float32 and valid records; only collisions are checked again. Returns
        ``created`` (n,) bool: True where the id was not stored before."""
        if not ids:
            return np.zeros(0, dtype=bool)
        iids = int_ids(ids)  # (n,)
        part = iids % self.n_shards
        with self._lock.write():
            stored = self._check_collisions(ids, iids)  # again: a writer may have raced us
            created = np.array([s is None for s in stored], dtype=bool)
            for sh in np.unique(part).tolist():
                sel = part == sh
                self._shards[sh].add(iids[sel], x[sel])
            self._records.put(iids, ids, records)
            self._version += 1
        return created

    def delete(self, ids: Sequence[str]) -> list[bool]:
        """Remove ids; element i is True if ids[i] was present (and is now gone)."""
        ids = check_str_ids(ids)
        iids = int_ids(ids)
        with self._lock.write():
            stored = self._records.names(iids)
            out, seen = [], set()  # a repeated id is present once
            for s, n in zip(ids, stored, strict=True):
                out.append(n == s and s not in seen)
                seen.add(s)
            gone = np.unique(iids[np.array(out, dtype=bool)])
            part = gone % self.n_shards
            for sh in np.unique(part).tolist():
                self._shards[sh].remove(gone[part == sh])
            self._records.remove(gone)
            self._version += 1
        return out

    # ----------------------------------------------------------------- reads
    def contains(self, ids: Sequence[str]) -> list[bool]:
        """Whether each id is stored, in one pass under one read lock."""
        iids = int_ids(ids)
        with self._lock.read():
            stored = self._records.names(iids)
        return [n == s for s, n in zip(ids, stored, strict=True)]

    def get(self, id_: str) -> np.ndarray | None:
        """The stored vector (dim,) float32, or None."""
        iid = int_id(id_)
        with self._lock.read():
            if self._records.names(np.array([iid]))[0] != id_:
                return None
            return self._shards[self.shard_of(iid)].get(iid)

    def get_records(self, ids: Sequence[str]) -> list[dict | None]:
        """Per id its record ``{"text", "metadata", "source", "version"}`` (``empty_record()``
        when stored without one), or None when the id is absent; one pass, one read lock."""
        ids = check_str_ids(ids)
        names, records = self.lookup(int_ids(ids))
        return [r if n == s else None for s, n, r in zip(ids, names, records, strict=True)]

    def version_counts(self) -> dict[str, int]:
        """Items per bundle version that made their vector; ids stored without a record
        count under ``""``."""
        with self._lock.read():
            return self._records.version_counts()

    def record_stats(self) -> dict[str, int]:
        """Rows (live, garbage) and bytes of the record store."""
        with self._lock.read():
            rs = self._records
            return {"records": len(rs), "garbage": rs.garbage, **rs.nbytes()}

    def memory(self) -> dict[str, int]:
        """Bytes held, by part: ``faiss`` (the indexes as serialised: vectors or codes, FAISS
        ids, quantisers, direct maps), ``fp16`` (re-rank copies), ``id_maps`` (the shards' id
        maps + the record store's offsets, codes and position map), ``strings`` (string ids,
        texts and metadata JSON) and ``filter_columns``."""
        with self._lock.read():
            rec = self._records.nbytes()
            shards = self._shards
            fp16 = sum(s.fp16_bytes() for s in shards)
            return {
                "faiss": sum(s.memory_bytes() for s in shards) - fp16,
                "fp16": fp16,
                "id_maps": sum(s.bookkeeping_bytes() for s in shards) + rec["bookkeeping"],
                "strings": rec["values"],
                "filter_columns": rec["filter_columns"],
            }

    def set_search_knobs(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change ``nprobe`` / ``ef_search`` of every shard in place (``Shard.set_search_knobs``);
        not persisted: a restart takes the spec it is given."""
        with self._lock.write():
            for s in self._shards:
                s.set_search_knobs(nprobe=nprobe, ef_search=ef_search)
            self.spec = self._shards[0].spec

    def filter_cache_stats(self) -> dict[str, int]:
        """Hits, misses, entries and bytes of the filter caches: ``match_*`` for the matching
        ids, ``gather_*`` for the gathered vectors (summed over shards)."""
        with self._lock.read():
            caches = {"match": [self._matches], "gather": [s.gather_cache for s in self._shards]}
        out = {}
        for name, lrus in caches.items():
            out[f"{name}_hits"] = sum(c.hits for c in lrus)
            out[f"{name}_misses"] = sum(c.misses for c in lrus)
            out[f"{name}_entries"] = sum(len(c) for c in lrus)
            out[f"{name}_bytes"] = sum(c.nbytes for c in lrus)
        return out

    def clear_filter_caches(self) -> None:
        """Empty the filter caches (the next filtered query computes from scratch)."""
        with self._lock.read():
            for c in [self._matches, *(s.gather_cache for s in self._shards)]:
                c.clear()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._search_threads, thread_name_prefix="shard-search"
                )
            return self._pool

    def search(
        self, queries, k: int, filter: Filter | dict | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product per query row: ``(scores (m, k) float32, ids (m, k) int64)``
        best first, padded with -inf / -1 (``irene.index.topk``); queries (m, dim).

        ``filter`` (``irene.index.filters``) is evaluated on the records first and each shard
        searches only the matching ids, so k hits come back whenever k items match."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (m, {self.dim}), got {q.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        f = as_filter(filter)
        key = None if f is None else f.model_dump_json()
        with self._lock.read():
            subsets: list = [None] * self.n_shards
            if f is not None:
                _, subsets = self._match_locked(f, key)
            jobs = list(zip(self._shards, subsets, strict=True))
            work = sum(s.work(None if sub is None else len(sub)) for s, sub in jobs)
            per_shard = work * len(q) / self.n_shards  # vectors x queries per shard
            if self.n_shards == 1 or self._search_threads == 1 or per_shard < PARALLEL_MIN_WORK:
                parts = [s.search(q, k, sub, key) for s, sub in jobs]
            else:
                pool = self._executor()
                parts = list(pool.map(lambda j: j[0].search(q, k, j[1], key), jobs))
        return merge_topk(parts, k)

    def _match_locked(self, f: Filter, key: str | None = None) -> tuple[np.ndarray, list]:
        """(the int64 ids ``f`` matches, the same split per shard), from the match cache when
        ``f`` was evaluated since the last write. Call under the read lock."""
        key = key or f.model_dump_json()
        cached = self._matches.get(key, self._version)
        if cached is not None:
            return cached
        hit = self._records.match(f)
        part = hit % self.n_shards
        out = (hit, [hit[part == i] for i in range(self.n_shards)])
        self._matches.put(key, self._version, out, 2 * hit.nbytes)
        return out

    def match(self, filter: Filter | dict) -> np.ndarray:
        """The int64 ids of the items ``filter`` matches (unordered)."""
        f = as_filter(filter)
        with self._lock.read():
            return self._match_locked(f)[0].copy()

    def count_where(self, filter: Filter | dict | None = None) -> int:
        """How many items ``filter`` matches (None: all)."""
        return self.count if filter is None else len(self.match(filter))

    def scroll(self, after: int = -1, limit: int = 100, filter: Filter | dict | None = None):
        """The next ``limit`` int64 ids greater than ``after`` in id order (of those
        ``filter`` matches): a stable cursor over the items while they change."""
        f = as_filter(filter)
        with self._lock.read():
            if f is None:
                iids = self._records.ids()
            else:
                iids = self._match_locked(f)[0]
        iids = iids[iids > after]
        if len(iids) > limit:
            iids = np.partition(iids, limit - 1)[:limit]
        return np.sort(iids)

    def names(self, iids) -> list[str | None]:
        """The string id of each int64 id (None where absent)."""
        with self._lock.read():
            return self._records.names(np.asarray(iids, dtype=np.int64).reshape(-1))

    def lookup(self, iids) -> tuple[list[str | None], list[dict | None]]:
        """String id and record of each int64 id (None, None where absent), under one read
        lock: what a search's hits need at the edge."""
        iids = np.asarray(iids, dtype=np.int64).reshape(-1)
        with self._lock.read():
            return self._records.lookup(iids)

    def search_named(self, queries, k: int) -> list[list[tuple[str, float]]]:
        """``search`` with string ids: ``[(id, score), ...]`` per query (tools and tests)."""
        return named(*self.search(queries, k), self.names)

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

    # ----------------------------------------------------------------- snapshots
    def state_dict(self, copy: bool = True) -> dict:
        """Everything needed to rebuild this index (plain Python + numpy arrays). Records
        are saved without garbage rows; the live store is then replaced by a compacted copy
        built outside the lock (unless a write came in meanwhile). ``copy=False``: the
        shards' fp16 copies are views, valid only until the next write."""
        with self._lock.read():
            store, writes, garbage = self._records, self._records.writes, self._records.garbage
            state = {
                "version": _STATE_VERSION,
                "dim": self.dim,
                "n_shards": self.n_shards,
                "spec": self.spec.to_dict(),
                "shards": [s.state(copy) for s in self._shards],
                "records": self._records.state(),
            }
        if garbage:
            compacted = RecordStore.from_state(state["records"])
            with self._lock.write():
                if self._records is store and store.writes == writes:
                    self._records = compacted
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load ``state_dict`` (or a version-1/2 state: ids beside the records, or no
        records)."""
        if state["version"] not in (1, 2, _STATE_VERSION):
            raise ValueError(f"unsupported index state version {state['version']}")
        if state["dim"] != self.dim:
            raise ValueError(f"state has dim {state['dim']}, index has dim {self.dim}")
        saved = IndexSpec.from_dict(state["spec"])
        if saved.kind != self.spec.kind or state["n_shards"] != self.n_shards:
            raise ValueError(
                f"state was built with kind={saved.kind!r}, n_shards={state['n_shards']}; "
                f"index has kind={self.spec.kind!r}, n_shards={self.n_shards}"
            )
        shards = [  # arrays; or a shard's own .npz blob (written before version 3)
            Shard.from_bytes(s, self.spec)
            if isinstance(s, bytes)
            else Shard.from_state(s, self.spec)
            for s in state["shards"]
        ]
        records = (
            RecordStore.from_state(state["records"])
            if state["version"] == _STATE_VERSION
            else _old_records(state)
        )
        with self._lock.write():
            self._shards, self._records = shards, records
            self._version += 1

    def to_bytes(self) -> bytes:
        """``state_dict`` as one self-describing ``.npz`` blob (no pickle): every shard's and
        the records' arrays side by side, so a loader reads each array once, in place."""
        return self._npz(copy=True).getvalue()

    def to_buffer(self) -> memoryview:
        """``to_bytes`` without its two copies of the fp16 vectors (a view of the blob, and
        the vectors read in place): only while no write can run (``DurableIndex`` holds its
        write lock while it takes a snapshot)."""
        return self._npz(copy=False).getbuffer()

    def _npz(self, copy: bool) -> io.BytesIO:
        st = self.state_dict(copy)
        meta = {k: st[k] for k in ("version", "dim", "n_shards", "spec")}
        meta["record_versions"] = st["records"]["versions"]
        arrays = {f"shard{i}.{k}": v for i, sh in enumerate(st["shards"]) for k, v in sh.items()}
        arrays.update({f"rec_{k}": st["records"][k] for k in _RECORD_ARRAYS + _NAME_ARRAYS})
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        return buf

    @staticmethod
    def state_from_bytes(data: bytes) -> dict:
        return ShardedIndex.state_from_file(io.BytesIO(data))

    @staticmethod
    def state_from_file(f) -> dict:
        """The state in a ``to_bytes`` blob, read from a seekable binary file (bytes before
        the blob, such as a snapshot header, are allowed: a zip is found from its end)."""
        with np.load(f, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            versions = meta.pop("record_versions", None)
            records = None
            if versions is not None:  # state version >= 2
                names = _NAME_ARRAYS if meta["version"] >= 3 else ()
                records = {k: z[f"rec_{k}"] for k in _RECORD_ARRAYS + names}
                records["versions"] = versions
            if meta["version"] < 3:  # each shard its own .npz blob; string ids beside records
                return {
                    **meta,
                    "shards": [z[f"shard_{i}"].tobytes() for i in range(meta["n_shards"])],
                    "records": records,
                    "int_ids": z["int_ids"],
                    "str_ids": json.loads(z["str_ids"].tobytes().decode()),
                }
            shards: list = [{} for _ in range(meta["n_shards"])]
            for key in z.files:
                head, dot, name = key.partition(".")
                if dot and head.startswith("shard"):
                    shards[int(head[5:])][name] = z[key]
            return {**meta, "shards": shards, "records": records}

    @classmethod
    def from_bytes(
        cls, data: bytes, spec: IndexSpec | None = None, search_threads: int | None = None
    ) -> ShardedIndex:
        """Rebuild from ``to_bytes``; ``spec`` may change search knobs but not the kind."""
        return cls.from_state(cls.state_from_bytes(data), spec, search_threads)

    @classmethod
    def from_file(
        cls, f, spec: IndexSpec | None = None, search_threads: int | None = None
    ) -> ShardedIndex:
        """``from_bytes`` reading a seekable file (``state_from_file``): restoring then holds
        the index's arrays, not also the whole blob."""
        return cls.from_state(cls.state_from_file(f), spec, search_threads)

    @classmethod
    def from_state(
        cls, state: dict, spec: IndexSpec | None = None, search_threads: int | None = None
    ) -> ShardedIndex:
        """Rebuild from ``state_dict``; ``spec`` may change search knobs but not the kind."""
        saved = IndexSpec.from_dict(state["spec"])
        if spec is not None and spec.kind != saved.kind:
            raise ValueError(f"index was built as {saved.kind!r}, not {spec.kind!r}")
        index = cls(state["dim"], state["n_shards"], spec or saved, search_threads)
        index.load_state_dict(state)
        return index


def _old_records(state: dict) -> RecordStore:
    """The record store of a version-1/2 state: string ids in ``int_ids``/``str_ids``, records
    (version 2) for some of them; the others are stored without a record."""
    iids = np.asarray(state["int_ids"], dtype=np.int64)
    name_of = dict(zip(iids.tolist(), state["str_ids"], strict=True))
    rec = state.get("records")
    if rec is None:
        store = RecordStore()
        with_record = np.zeros(0, dtype=np.int64)
    else:
        with_record = np.asarray(rec["ids"], dtype=np.int64)
        off, data = pack_strings([name_of[i] for i in with_record.tolist()])
        store = RecordStore.from_state({**rec, "name_off": off, "name": data})
    rest = iids[~np.isin(iids, with_record)]
    if len(rest):
        store.put(rest, [name_of[i] for i in rest.tolist()], None)
    return store
