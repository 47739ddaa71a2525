"""One FAISS index shard: int64 ids -> float32 vectors, inner-product metric, upsert semantics.

Index kinds (``IndexSpec.kind``):

* ``"flat"`` -- ``IndexIDMap2(IndexFlatIP)``: exact search; ids are the caller's int64 ids;
  ``remove_ids`` and ``reconstruct`` are native.
* ``"hnsw"`` -- ``IndexIDMap2(IndexHNSWFlat)``. FAISS HNSW cannot remove vectors, so every
  insertion gets a fresh internal *label* (the id given to the ``IndexIDMap2``) and a removal
  or an overwrite only *tombstones* the old label. Tombstones are filtered inside the HNSW
  search through an ``IDSelectorNot(IDSelectorBatch(tombstones))`` search parameter (so no
  over-fetching is needed and recall is unaffected), and when tombstones exceed
  ``HNSW_REBUILD_FRACTION`` (20 %) of the stored vectors the graph is rebuilt from the live
  vectors (amortised O(1) rebuild work per removal).
* ``"ivf"`` -- ``IndexIVFFlat`` with a hash-table direct map (native ``remove_ids`` and
  ``reconstruct`` by id; ``IndexIDMap2`` is *not* used around IVF because its id compaction
  assumes the sub-index renumbers like a flat index, which IVF does not). IVF needs training:
  until the shard holds ``ivf_nlist * IVF_MIN_POINTS_PER_CENTROID`` (39) vectors, the shard
  keeps them in an exact flat fallback index; on the add that crosses the threshold the
  coarse quantiser is trained on all stored vectors, which then move into the IVF index.
* ``"ivfpq"`` -- ``IndexIVFPQ`` (residual product quantisation: ``pq_m`` sub-quantisers of
  ``pq_nbits`` bits each, so ``pq_m * pq_nbits / 8`` code bytes per vector instead of
  ``4 * dim``), otherwise exactly like ``"ivf"``: the same hash-table direct map, native
  ``remove_ids``, and the same exact flat fallback until training. Its training threshold is
  ``max(ivf_nlist, 2 ** pq_nbits) * IVF_MIN_POINTS_PER_CENTROID`` (the coarse quantiser and
  every PQ sub-quantiser get >= 39 training points per centroid); both quantisers are trained
  on all vectors stored at that moment. ``pq_m`` must divide ``dim`` (checked when the
  ``Shard`` is built: ``ValueError`` naming the valid choices; nothing is picked silently).
  Scores are PQ approximations of the inner product, and once trained ``get`` returns the
  *PQ-decoded approximation* of the stored vector (centroid + decoded residual), not the
  vector that was added (before training ``get`` is exact, like the flat fallback).
  With ``rerank = r > 0`` the shard also keeps every vector in fp16 (``HalfVectors``, 2 bytes
  per dimension) and re-scores the top ``r * k`` PQ candidates of every search with them (as
  FAISS's ``IndexRefine``), so the PQ codes only choose candidates and the ranking is exact
  up to fp16 rounding; ``get`` and the filters' exact plan then read the fp16 copy too, so
  the IVF-PQ index keeps no direct map (``remove_ids`` then scans the inverted lists).

Ids: an ``IdMap`` (sorted int64 array + recent dict) maps each id to its HNSW label, its fp16
slot, or nothing (a 1-byte placeholder for the other kinds, whose FAISS labels are the ids).

``Shard.memory_bytes()`` is the size of the FAISS index as ``faiss.write_index`` serialises
it (counted while streaming, nothing is materialised): vectors or codes, ids, graph links,
direct map and quantisers, plus the fp16 copies. It excludes the ``Shard``'s id map
(``bookkeeping_bytes()``) and the
in-memory overhead of ``std::unordered_map`` (the IVF direct map is written as 16-byte
pairs) and of allocator slack, so it is a close lower bound of the resident size.

GPU (``use_gpu``): only the flat kind, only if ``faiss.get_num_gpus() > 0`` (``"auto"``) or
when forced with ``True``. The CPU index stays authoritative; a GPU copy is (re)built lazily
on the first search after a write and used for searching only.

A ``Shard`` is not thread-safe for writes; concurrent ``search``/``get`` calls without a
concurrent write are safe (``ShardedIndex`` enforces this with a readers-writer lock).
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import faiss
import numpy as np

from irene.index.cache import VersionedLRU
from irene.index.halfvec import HalfVectors
from irene.index.idmap import IdMap, grown

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf", "ivfpq")
IVF_KINDS = ("ivf", "ivfpq")
HNSW_REBUILD_FRACTION = 0.2
IVF_MIN_POINTS_PER_CENTROID = 39
# Cost model of a filtered search (Shard.plan): nanoseconds per step, fitted to both plans
# timed on 250k-vector shards of 384-d vectors on a 2-core machine (bench/filter_plans.py).
# The exact plan gathers and scores the matching vectors (GATHER_NS by where they are read
# from); the selector plan runs the index's own search with an IDSelectorBatch of them.
GATHER_NS = {"direct-map": 900, "fp16": 400, "flat": 450}
SELECTOR_BUILD_NS = 100  # per matching id put in the IDSelectorBatch
SCAN_NS = 2  # per entry of a scanned list or flat index that the selector checks
DISTANCE_NS = 300  # per vector the selector plan scores (flat, HNSW)
IVF_SEARCH_NS = 400_000  # fixed cost of one IVF search (coarse quantiser, list setup)
SELECTOR_BYTES_PER_ID = 64  # an IDSelectorBatch: a std::unordered_set entry + its bloom bits
# A filtered IVF search probes FILTER_NPROBE_FACTOR * nprobe / sqrt(selectivity) lists: the
# smallest of 1, 1.25, 1.5 whose recall@10 stayed >= 0.95 from 0.1% to 30% on one 250k-vector
# shard over 3 seeds (bench/filter_plans.py --nprobe-factor F; 1 fell to 0.918 at 1%)
FILTER_NPROBE_FACTOR = 1.25
HNSW_MAX_FILTER_EF = 4096  # efSearch cap of a filtered HNSW search (efSearch / selectivity)
_MB = 1 << 20
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexSpec:
    """How each shard indexes its vectors (see the module docstring)."""

    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    ef_search: int = 128
    ivf_nlist: int = 1024
    nprobe: int = 16
    use_gpu: bool | str = "auto"  # True | False | "auto"
    pq_m: int = 48  # ivfpq: sub-quantisers (code bytes per vector at 8 bits); must divide dim
    pq_nbits: int = 8  # ivfpq: bits per sub-quantiser code, 1..16
    # ivfpq: re-score the top rerank * k PQ candidates with fp16 copies of the vectors (0: off)
    rerank: int = 0
    # per shard: vectors gathered for recent filters (and, per ShardedIndex, their matching
    # ids), reused until the next write (irene.index.cache); 0 turns the caches off
    filter_cache_mb: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"IndexSpec.kind must be one of {KINDS}, got {self.kind!r}")
        if self.use_gpu not in (True, False, "auto"):
            raise ValueError(
                f"IndexSpec.use_gpu must be True, False or 'auto', got {self.use_gpu!r}"
            )
        for name in (
            "hnsw_m",
            "hnsw_ef_construction",
            "ef_search",
            "ivf_nlist",
            "nprobe",
            "pq_m",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexSpec.{name} must be >= 1")
        if not 1 <= self.pq_nbits <= 16:
            raise ValueError(f"IndexSpec.pq_nbits must be in 1..16, got {self.pq_nbits}")
        if self.rerank < 0:
            raise ValueError(f"IndexSpec.rerank must be >= 0, got {self.rerank}")
        if self.rerank and self.kind != "ivfpq":
            raise ValueError(f"IndexSpec.rerank applies to kind 'ivfpq' only, not {self.kind!r}")
        if self.filter_cache_mb < 0:
            raise ValueError(f"IndexSpec.filter_cache_mb must be >= 0, got {self.filter_cache_mb}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | IndexSpec | None) -> IndexSpec:
        if d is None:
            return cls()
        if isinstance(d, IndexSpec):
            return d
        return cls(**d)


def _gpu_available() -> bool:
    get = getattr(faiss, "get_num_gpus", None)
    return bool(get is not None and get() > 0)


def as_vectors(vecs, dim: int) -> np.ndarray:
    """Validate and return a C-contiguous, writable float32 copy of shape (n, dim)."""
    arr = np.array(vecs, dtype=np.float32, order="C", copy=True)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinity")
    return arr


def as_ids(ids) -> np.ndarray:
    arr = np.array(ids, dtype=np.int64, copy=True).reshape(-1)
    if (arr < 0).any():
        raise ValueError("shard ids must be non-negative int64")
    return arr


class Shard:
    """One FAISS index of ``dim``-dimensional float32 vectors keyed by non-negative int64 ids."""

    def __init__(self, dim: int, spec: IndexSpec | None = None) -> None:
        if dim < 1:
            raise ValueError("dim must be >= 1")
        self.dim = int(dim)
        self.spec = spec or IndexSpec()
        if self.spec.kind == "ivfpq" and self.dim % self.spec.pq_m:
            divisors = [m for m in range(1, min(self.dim, 128) + 1) if self.dim % m == 0]
            raise ValueError(
                f"IndexSpec.pq_m={self.spec.pq_m} must divide dim={self.dim}; "
                f"valid pq_m values up to 128: {divisors}"
            )
        # id -> HNSW label (fresh per insertion) / fp16 slot (rerank) / 0 (FAISS label == id)
        self._map = IdMap(self._map_dtype())
        self._id_of_label = np.zeros(0, dtype=np.int64)  # HNSW only: label -> id, -1: dead
        self._next_label = 0  # HNSW only
        self._dead: set[int] = set()  # HNSW tombstoned labels
        self._search_params = None  # HNSW search params (efSearch + tombstone selector)
        self._selector_refs: tuple = ()  # keeps the C++ selectors alive while in use
        self._ivf_trained = False
        self._index = self._new_index()
        # ivfpq with rerank: fp16 copies of the vectors, in the slots of _map (docstring)
        self._fp16 = HalfVectors(self.dim) if self.spec.rerank else None
        self._version = 0  # bumped by every write: the gather cache's entries die with it
        self.gather_cache = VersionedLRU(self.spec.filter_cache_mb * _MB)
        self._use_gpu = self.spec.kind == "flat" and (
            self.spec.use_gpu is True or (self.spec.use_gpu == "auto" and _gpu_available())
        )
        if self.spec.use_gpu is True and not _gpu_available():
            raise ValueError("IndexSpec.use_gpu=True but faiss sees no GPU (install faiss-gpu)")
        self._gpu_lock = threading.Lock()
        self._hnsw_lock = threading.Lock()
        self._gpu_res = None
        self._gpu_index = None  # lazily rebuilt copy; None when stale
        self._refresh_search_params()

    # ----------------------------------------------------------------- construction
    def _new_flat(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _new_hnsw(self) -> faiss.Index:
        hnsw = faiss.IndexHNSWFlat(self.dim, self.spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.spec.hnsw_ef_construction
        hnsw.hnsw.efSearch = self.spec.ef_search
        return faiss.IndexIDMap2(hnsw)

    def _map_dtype(self) -> type:
        if self.spec.kind == "hnsw":
            return np.int64
        return np.int32 if self.spec.rerank else np.int8  # fp16 slots: < 2**31 per shard

    def _new_index(self) -> faiss.Index:
        if self.spec.kind == "hnsw":
            return self._new_hnsw()
        return self._new_flat()  # flat, and the untrained-IVF fallback

    @property
    def ivf_train_threshold(self) -> int:
        """IVF kinds: stored vectors at which the shard trains and leaves its flat fallback."""
        centroids = self.spec.ivf_nlist
        if self.spec.kind == "ivfpq":
            centroids = max(centroids, 2**self.spec.pq_nbits)
        return centroids * IVF_MIN_POINTS_PER_CENTROID

    @property
    def count(self) -> int:
        return len(self._map)

    def __len__(self) -> int:
        return len(self._map)

    @property
    def n_tombstones(self) -> int:
        """HNSW: removed/overwritten vectors still in the graph (filtered at search)."""
        return len(self._dead)

    @property
    def n_stored(self) -> int:
        """Vectors physically in the FAISS index (live + tombstoned)."""
        return int(self._index.ntotal)

    @property
    def ivf_trained(self) -> bool:
        """IVF kinds: whether the shard has left its exact flat fallback."""
        return self._ivf_trained

    def __contains__(self, id_: int) -> bool:
        return bool(self._map.get([int(id_)])[0] >= 0)

    def ids(self) -> np.ndarray:
        """All stored ids, (n,) int64 (unordered)."""
        return self._map.keys()

    def fp16_bytes(self) -> int:
        """Memory of the fp16 re-rank copies (0 without ``rerank``)."""
        return 0 if self._fp16 is None else self._fp16.nbytes

    def bookkeeping_bytes(self) -> int:
        """Memory of the id map (and HNSW's label -> id array), outside FAISS."""
        return self._map.nbytes() + self._id_of_label.nbytes

    # ----------------------------------------------------------------- writes
    def add(self, ids, vecs) -> None:
        """Upsert: ids (n,) int64, vecs (n, dim). Existing ids are replaced."""
        ids_arr = as_ids(ids)
        x = as_vectors(vecs, self.dim)  # (n, dim)
        if len(ids_arr) != len(x):
            raise ValueError(f"{len(ids_arr)} ids but {len(x)} vectors")
        if len(ids_arr) == 0:
            return
        if len(np.unique(ids_arr)) != len(ids_arr):  # keep the last occurrence of each id
            _, last_rev = np.unique(ids_arr[::-1], return_index=True)
            keep = np.sort(len(ids_arr) - 1 - last_rev)
            ids_arr, x = ids_arr[keep], x[keep]
        self.remove(ids_arr)
        if self.spec.kind == "hnsw":
            labels = np.arange(self._next_label, self._next_label + len(ids_arr), dtype=np.int64)
            self._next_label += len(ids_arr)
            self._id_of_label = grown(self._id_of_label, self._next_label, -1)
            self._id_of_label[labels] = ids_arr
            self._map.put(ids_arr, labels)
        else:
            labels = ids_arr
            slots = None if self._fp16 is None else self._fp16.put(x)
            self._map.put(ids_arr, np.zeros(len(ids_arr)) if slots is None else slots)
        self._index.add_with_ids(x, labels)
        if self.spec.kind in IVF_KINDS and not self._ivf_trained:
            self._maybe_train_ivf()
        self._gpu_index = None
        self._version += 1

    def remove(self, ids) -> int:
        """Remove ids; returns how many were present."""
        ids_arr = np.unique(as_ids(ids))
        old = self._map.remove(ids_arr)
        found = old >= 0
        if not found.any():
            return 0
        present = ids_arr[found]
        if self.spec.kind == "hnsw":
            labels = old[found]
            self._dead.update(labels.tolist())
            self._id_of_label[labels] = -1
            if len(self._dead) > HNSW_REBUILD_FRACTION * self._index.ntotal:
                self._rebuild_hnsw()
            else:
                self._refresh_search_params()
        else:
            self._index.remove_ids(present)
            if self._fp16 is not None:
                self._fp16.free(old[found])
        self._gpu_index = None
        self._version += 1
        return len(present)

    def _all_stored(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels (N,) int64, vectors (N, dim)) of everything in an IndexIDMap2, dead or alive."""
        labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        inner = faiss.downcast_index(self._index.index)
        storage = faiss.downcast_index(inner.storage) if self.spec.kind == "hnsw" else inner
        vecs = (
            storage.reconstruct_n(0, storage.ntotal)
            if storage.ntotal
            else np.zeros((0, self.dim), np.float32)
        )
        return labels, vecs

    def _rebuild_hnsw(self) -> None:
        labels, vecs = self._all_stored()
        dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
        alive = ~np.isin(labels, dead)
        log.debug("rebuilding HNSW shard: %d live of %d stored", int(alive.sum()), len(labels))
        self._index = self._new_hnsw()
        if alive.any():
            self._index.add_with_ids(vecs[alive], labels[alive])
        self._dead.clear()
        self._refresh_search_params()

    def _maybe_train_ivf(self) -> None:
        if self.count < self.ivf_train_threshold:
            return
        ids, vecs = self._all_stored()  # flat fallback: labels == ids
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.spec.kind == "ivfpq":
            ivf = faiss.IndexIVFPQ(
                quantizer,
                self.dim,
                self.spec.ivf_nlist,
                self.spec.pq_m,
                self.spec.pq_nbits,
                faiss.METRIC_INNER_PRODUCT,
            )
        else:
            ivf = faiss.IndexIVFFlat(
                quantizer, self.dim, self.spec.ivf_nlist, faiss.METRIC_INNER_PRODUCT
            )
        ivf.train(vecs)
        if self._fp16 is None:  # get / exact plan reconstruct from it (else: the fp16 copies)
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.add_with_ids(vecs, ids)
        ivf.nprobe = self.spec.nprobe
        log.info(
            "trained %s shard (nlist=%d) on %d vectors",
            self.spec.kind,
            self.spec.ivf_nlist,
            len(ids),
        )
        self._index = ivf
        self._ivf_trained = True

    def set_search_knobs(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change search-time knobs in place, without a rebuild (``spec`` is replaced).

        ``nprobe`` applies to the IVF kinds (once trained), ``ef_search`` to HNSW; both are
        recorded in ``spec`` for every kind. Not safe concurrently with ``search``.
        """
        changes = {k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v}
        if (nprobe is not None and nprobe < 1) or (ef_search is not None and ef_search < 1):
            raise ValueError("nprobe and ef_search must be >= 1")
        if not changes:
            return
        self.spec = replace(self.spec, **changes)
        if self._ivf_trained:
            self._index.nprobe = self.spec.nprobe
        if self.spec.kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = self.spec.ef_search
        self._refresh_search_params()

    def memory_bytes(self) -> int:
        """Bytes of the FAISS index as serialised by ``faiss.write_index`` (module docstring).

        Counted through a streaming writer, so no copy of the index is made. Includes HNSW
        tombstones (they stay in the graph until a rebuild), for an untrained IVF kind the flat
        fallback, and the fp16 re-rank copies when ``rerank`` is on.
        """
        total = 0

        def count(chunk: bytes) -> None:
            nonlocal total
            total += len(chunk)

        writer = faiss.PyCallbackIOWriter(count)
        faiss.write_index(self._index, writer)
        del writer  # flushes any buffered tail into ``count``
        return total + self.fp16_bytes()

    def _refresh_search_params(self) -> None:
        """Rebuild the HNSW search parameters (efSearch + tombstone filter)."""
        if self.spec.kind != "hnsw":
            self._search_params = None
            return
        params = faiss.SearchParametersHNSW()
        params.efSearch = self.spec.ef_search
        refs: tuple = ()
        if self._dead:
            dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
            batch = faiss.IDSelectorBatch(dead)
            not_dead = faiss.IDSelectorNot(batch)
            params.sel = not_dead
            refs = (batch, not_dead)
        self._search_params, self._selector_refs = params, refs

    # ----------------------------------------------------------------- reads
    def get(self, id_: int) -> np.ndarray | None:
        """The stored vector (dim,) float32, or None."""
        ids = np.array([int(id_)], dtype=np.int64)
        if self._map.get(ids)[0] < 0:
            return None
        return self._vectors(ids)[0]

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (all stored here) as float32 (n, dim): the fp16
        copies when kept, else the index's own (PQ-decoded for a trained ivfpq)."""
        if self._fp16 is not None:
            return self._fp16.take(self._map.get(ids))
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._index.reconstruct_batch(self._labels_of(ids)), np.float32)

    def _reranked(self) -> bool:
        return self._fp16 is not None and self._ivf_trained

    def _reranked_search(
        self, q: np.ndarray, k: int, most: int, params=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The PQ index's top ``rerank * k`` candidates (at most ``most``) re-scored with the
        fp16 copies: (scores, labels) (m, <= k) best first."""
        _, cand = self._index.search(q, min(self.spec.rerank * k, most), params=params)
        return self._rerank(q, cand, k)

    def _rerank(self, q: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Re-score candidate labels (m, c) (-1: none) with the fp16 copies: the best k of
        each row, (scores, labels) (m, min(k, c)) best first, -inf / -1 padding."""
        m, c = lab.shape
        valid = lab >= 0
        s = np.full((m, c), -np.inf, dtype=np.float32)
        if valid.any():
            x = self._vectors(lab[valid])  # (v, dim)
            s[valid] = np.einsum("ij,ij->i", x, q[np.nonzero(valid)[0]])
        kk = min(k, c)
        order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        top = np.take_along_axis(s, order, axis=1)
        return top, np.where(np.isfinite(top), np.take_along_axis(lab, order, axis=1), -1)

    def _search_index(self) -> faiss.Index:
        if not self._use_gpu:
            return self._index
        with self._gpu_lock:
            if self._gpu_index is None:
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._index)
            return self._gpu_index

    def search(
        self, queries, k: int, subset: np.ndarray | None = None, key: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: scores (m, k) float32, ids (m, k) int64; -1 / -inf padding.

        ``subset``: only these ids (int64, unique, all stored here) may be returned -- a
        filter evaluated before the search, so a query gets k hits whenever k ids qualify.
        ``key`` names the filter that made ``subset`` (its canonical JSON): the vectors an
        exact plan gathers are then kept for the next search with that key until a write."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (m, {self.dim}), got {q.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        m = q.shape[0]
        scores = np.full((m, k), -np.inf, dtype=np.float32)
        ids = np.full((m, k), -1, dtype=np.int64)
        if not self.count or m == 0 or (subset is not None and not len(subset)):
            return scores, ids
        if subset is not None and len(subset) < self.count:
            subset = np.asarray(subset, dtype=np.int64)
            return self._search_subset(q, k, subset, key, scores, ids)
        kk = min(k, self._index.ntotal)
        if self._reranked():
            scores[:, :kk], ids[:, :kk] = self._reranked_search(q, kk, self._index.ntotal)
            return scores, ids
        index = self._search_index()
        if self._use_gpu:
            with self._gpu_lock:  # GPU resources are not safe for concurrent use
                d, lab = index.search(q, kk)
        elif self._search_params is not None:
            # one HNSW search at a time per shard: concurrent ones crashed (SIGSEGV) in
            # tests/index/test_sharded.py::test_concurrent_search_while_adding[hnsw]
            with self._hnsw_lock:
                d, lab = index.search(q, kk, params=self._search_params)
        else:
            d, lab = index.search(q, kk)
        valid = lab >= 0
        scores[:, :kk] = np.where(valid, d, -np.inf)
        if self.spec.kind == "hnsw":
            ids[:, :kk] = np.where(valid, self._labels_to_ids(lab), -1)
        else:
            ids[:, :kk] = lab
        return scores, ids

    def filter_nprobe(self, frac: float) -> int:
        """IVF kinds: the nprobe of a search restricted to a fraction ``frac`` of the stored
        vectors: ``FILTER_NPROBE_FACTOR * nprobe / sqrt(frac)`` lists, at most all of them."""
        wanted = FILTER_NPROBE_FACTOR * self.spec.nprobe / math.sqrt(frac)
        return min(self.spec.ivf_nlist, math.ceil(wanted))

    def plan(self, n_match: int) -> str:
        """How a search restricted to ``n_match`` of the stored ids runs: ``"exact"`` (score
        just those vectors) when that is estimated to take less time than the index's own
        search with the ids as an ``IDSelector`` (``"selector"``): the cost model above."""
        n = max(self.count, 1)
        frac = min(1.0, n_match / n)
        if self._fp16 is not None:
            gather = GATHER_NS["fp16"]
        elif self.spec.kind in IVF_KINDS and self._ivf_trained:
            gather = GATHER_NS["direct-map"]
        else:
            gather = GATHER_NS["flat"]
        selector = SELECTOR_BUILD_NS * n_match
        if self.spec.kind in IVF_KINDS and self._ivf_trained:
            selector += IVF_SEARCH_NS + SCAN_NS * n * self.filter_nprobe(frac) / self.spec.ivf_nlist
        elif self.spec.kind == "hnsw":  # every node visited costs a distance
            selector += DISTANCE_NS * self.filter_ef(1, frac) * self.spec.hnsw_m * 2
        else:
            selector += SCAN_NS * n + DISTANCE_NS * n_match
        return "exact" if gather * n_match <= selector else "selector"

    def work(self, n_match: int | None = None) -> int:
        """Stored vectors a search reads, in the unit of ``ShardedIndex``'s rule for searching
        shards in parallel: the matching ones for an exact plan, else all of them (``n_match``
        None: unfiltered)."""
        if n_match is None or n_match >= self.count:
            return self.count
        return n_match if not n_match or self.plan(n_match) == "exact" else self.count

    def filter_ef(self, kk: int, frac: float) -> int:
        """HNSW: the efSearch of a search restricted to a fraction ``frac`` of the vectors."""
        return max(kk, min(HNSW_MAX_FILTER_EF, math.ceil(self.spec.ef_search / frac)))

    def _prepared(self, plan: str, key: str | None, subset: np.ndarray, make) -> object:
        """What ``plan`` prepares for a search restricted to ``subset`` (``make(subset) ->
        (value, nbytes)``), from the gather cache when ``key``'s entry for ``plan`` is of this
        write version and of the same ids, else made and kept there for the next search."""
        if key is None:
            return make(subset)[0]
        key = f"{plan}:{key}"
        hit = self.gather_cache.get(key, self._version, lambda v: np.array_equal(v[0], subset))
        if hit is not None:
            return hit[1]
        value, size = make(subset)
        self.gather_cache.put(key, self._version, (subset.copy(), value), size)
        return value

    def _gather(self, subset: np.ndarray) -> tuple[object, int]:
        """The stored vectors of ``subset``, scorable: fp16 codes in a flat scalar-quantizer
        index when the shard keeps fp16 copies (scored without a float32 copy), else float32
        (s, dim); and their size in bytes."""
        if self._fp16 is not None:
            index = self._fp16.flat_index(self._map.get(subset))
            return index, index.sa_code_size() * index.ntotal
        x = self._vectors(subset)
        return x, x.nbytes

    def _score_subset(
        self, q: np.ndarray, kk: int, subset: np.ndarray, key: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``kk`` of ``q`` over the stored vectors of ``subset``: (scores, positions
        in ``subset``) (m, kk) best first."""
        gathered = self._prepared("exact", key, subset, self._gather)
        if isinstance(gathered, np.ndarray):
            # scored by FAISS (its OpenMP pool, not numpy's BLAS pool: two pools fight over
            # the cores of a small machine; README: Filters)
            return faiss.knn(q, gathered, kk, faiss.METRIC_INNER_PRODUCT)
        return gathered.search(q, kk)

    def _selector(self, subset: np.ndarray) -> tuple[faiss.IDSelectorBatch, int]:
        """An ``IDSelectorBatch`` of the labels of ``subset``, and its approximate size."""
        return faiss.IDSelectorBatch(self._labels_of(subset)), SELECTOR_BYTES_PER_ID * len(subset)

    def _labels_of(self, subset: np.ndarray) -> np.ndarray:
        if self.spec.kind != "hnsw":
            return subset
        return self._map.get(subset)

    def _search_subset(
        self,
        q: np.ndarray,
        k: int,
        subset: np.ndarray,
        key: str | None,
        scores: np.ndarray,
        ids: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        kk = min(k, len(subset))
        if self.plan(len(subset)) == "exact":
            d, pos = self._score_subset(q, kk, subset, key)
            scores[:, :kk] = d
            ids[:, :kk] = np.where(pos >= 0, subset[np.maximum(pos, 0)], -1)
            return scores, ids
        sel = self._prepared("selector", key, subset, self._selector)
        frac = len(subset) / self.count
        if self.spec.kind in IVF_KINDS and self._ivf_trained:
            params = faiss.SearchParametersIVF()
            params.nprobe = self.filter_nprobe(frac)
        elif self.spec.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = self.filter_ef(kk, frac)
        else:
            params = faiss.SearchParameters()
        params.sel = sel
        if self._reranked():
            d, lab = self._reranked_search(q, kk, len(subset), params)
        else:
            d, lab = self._index.search(q, kk, params=params)
        del sel  # kept alive until the search returned
        valid = lab >= 0
        scores[:, :kk] = np.where(valid, d, -np.inf)
        ids[:, :kk] = (
            np.where(valid, self._labels_to_ids(lab), -1) if self.spec.kind == "hnsw" else lab
        )
        return scores, ids

    def _labels_to_ids(self, labels: np.ndarray) -> np.ndarray:
        inverse = self._id_of_label
        ok = (labels >= 0) & (labels < len(inverse))
        out = np.full(labels.shape, -1, dtype=np.int64)
        out[ok] = inverse[labels[ok]]
        return out

    # ----------------------------------------------------------------- serialisation
    def state(self, copy: bool = True) -> dict[str, np.ndarray]:
        """The shard as named arrays (what ``to_bytes`` saves, and what ``ShardedIndex``
        writes into its own snapshot file next to the other shards' arrays). ``copy=False``:
        the fp16 copies are a view, valid only until the next write."""
        meta = {
            "version": _FORMAT_VERSION,
            "dim": self.dim,
            "spec": self.spec.to_dict(),
            "next_label": self._next_label,
            "ivf_trained": self._ivf_trained,
        }
        ids, vals = self._map.items()
        out = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "index": faiss.serialize_index(self._index),
            "ids": ids,
            "labels": vals.astype(np.int64) if self.spec.kind == "hnsw" else ids,
            "dead": np.fromiter(self._dead, dtype=np.int64, count=len(self._dead)),
        }
        if self._fp16 is not None:  # in slot order (a view), with each id's slot
            rows = self._fp16.rows()
            out["fp16_vectors"], out["fp16_slots"] = (rows.copy() if copy else rows), vals
        return out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **self.state())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, spec: IndexSpec | None = None) -> Shard:
        """Restore a shard; ``spec`` may override search-time knobs (kind must match)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls.from_state(z, spec)

    @classmethod
    def from_state(cls, z: Mapping[str, np.ndarray], spec: IndexSpec | None = None) -> Shard:
        """Restore from :meth:`state`'s arrays (a dict or an open ``.npz``, read key by key:
        the arrays are taken over, not copied)."""
        meta = json.loads(z["meta"].tobytes().decode())
        if meta["version"] != _FORMAT_VERSION:
            raise ValueError(f"unsupported shard format version {meta['version']}")
        saved = IndexSpec.from_dict(meta["spec"])
        if spec is not None and spec.kind != saved.kind:
            raise ValueError(f"shard was built as {saved.kind!r}, not {spec.kind!r}")
        shard = cls(meta["dim"], spec or saved)
        shard._index = faiss.deserialize_index(z["index"])
        ids, labels = z["ids"], z["labels"]
        shard._dead = set(z["dead"].tolist())
        vals = np.zeros(len(ids), dtype=np.int8)
        if shard.spec.kind == "hnsw":
            vals = labels
            inverse = np.full(meta["next_label"], -1, dtype=np.int64)
            inverse[labels] = ids
            shard._id_of_label = inverse
        if shard._fp16 is not None:
            if "fp16_vectors" not in z:
                raise ValueError(
                    "IndexSpec.rerank needs the fp16 copies of the vectors, which this "
                    "shard was saved without (rerank=0): rebuild it from the vectors"
                )
            vals = z["fp16_slots"]
            shard._fp16 = HalfVectors.of(shard.dim, z["fp16_vectors"], vals)
        shard._map = IdMap.from_arrays(ids, vals, shard._map_dtype())
        shard._next_label = meta["next_label"]
        shard._ivf_trained = meta["ivf_trained"]
        if shard._ivf_trained:
            shard._index.nprobe = shard.spec.nprobe
        shard._refresh_search_params()
        return shard
